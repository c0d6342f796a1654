"""`--mode=eval`: object discovery and label propagation on a DAVIS-layout set
(the synthetic one by default), for the trained model and two baselines that
the evaluation computes itself: the untrained model (same seed) and the
trivial prediction (whole frame one object; the first frame's labels copied).
"""

import csv
import os

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from smtc_jax import checkpoint, train
from smtc_jax.data import palette, sources, synthetic
from smtc_jax.evaluation import davis, discovery, propagation
from smtc_jax.models import smtc

EVAL_DIR = "eval"


def load_video(root: str, name: str):
  """Frames (F, H, W, 3) uint8, instance labels (F, H, W) from both annotation sets."""
  frames = np.stack([sources.load_frame(p) for p in
                     sources.list_frames(os.path.join(root, synthetic.IMAGE_DIR, name))])
  labels = lambda sub: davis.read_annotations(root, name, sub)[1]
  return frames, labels(synthetic.UNSUPERVISED_DIR), labels(synthetic.ANNOTATION_DIR)


def trained_variables(config, workdir: str):
  """The evaluated weights: WORKDIR/export if there, else the latest checkpoint."""
  export = os.path.join(workdir, checkpoint.EXPORT_DIR)
  if os.path.isdir(export):
    logging.info("evaluating %s of %s", config.eval.params, export)
    tree = checkpoint.load_params(export)
    return train.model_variables(tree[config.eval.params], tree.get("batch_stats", {}))
  state = jax.device_get(train.latest_state(config, workdir))
  return train.model_variables(getattr(state, config.eval.params), state.batch_stats)


def untrained_variables(config):
  """The model at initialisation: the trained run's step 0 (same seed)."""
  variables, _ = train.init_variables(config, smtc.build_model(config),
                                      jax.random.PRNGKey(config.seed))
  return variables


class Predictor:
  """Model forward for evaluation: clips -> outputs, frames -> encoder features."""

  def __init__(self, config):
    self.config = config
    self.model = smtc.build_model(config)
    self.size = tuple(config.data.resolution)
    self.grid = tuple(r // smtc.encoder_stride(config) for r in self.size)
    rngs = train.model_rngs(jax.random.PRNGKey(config.seed))
    self._apply = jax.jit(lambda variables, clip: self.model.apply(
        variables, train.normalize(clip, config), rngs=rngs))
    self._encode = jax.jit(lambda variables, clip: self.model.apply(
        variables, train.normalize(clip, config), method=smtc.SMTC.encode))

  def clips(self, variables, frames):
    small = discovery.resize_frames(frames, self.size)
    clips = discovery.clips_of(small, self.config.data.num_frames)
    outs = [self._apply(variables, jnp.asarray(c[None])) for c in clips]
    return jax.tree.map(lambda *x: np.concatenate([np.asarray(v) for v in x]), *outs)

  def feature_size(self, image_size):
    """Frames for label propagation keep their resolution, cut down to multiples of
    the encoder stride (the CRW protocol)."""
    stride = smtc.encoder_stride(self.config)
    return tuple(max(stride, (s // stride) * stride) for s in image_size)

  def features(self, variables, frames):
    """(F, h, w, D) encoder features of every frame at the propagation size."""
    small = discovery.resize_frames(frames, self.feature_size(frames.shape[1:3]))
    return jnp.stack([self._encode(variables, jnp.asarray(f[None, None]))[0, 0] for f in small])


def score_discovery(gt, proposals, matching: str):
  """(single-object IoU, multi-object J&F) of one video."""
  iou = float(np.mean(davis.j_measures(gt > 0, proposals > 0)))
  return iou, davis.mean_jf(*davis.evaluate_sequence(gt, proposals, "unsupervised", matching))


def score_propagation(gt, predicted):
  """Semi-supervised J&F of one video (first and last frames excluded)."""
  num_objects = int(gt[0].max())
  return davis.mean_jf(*davis.evaluate_sequence(gt[1:-1], predicted[1:-1], "semi-supervised",
                                                num_objects=num_objects))


def propagate(predictor, variables, frames, gt, e):
  feats = predictor.features(variables, frames)
  num = int(gt.max()) + 1
  size = predictor.feature_size(frames.shape[1:3])
  first = propagation.one_hot_on_grid(_resize_labels(gt[0], size), num, feats.shape[1:3])
  out = propagation.propagate_video(feats, first, video_len=e.prop_video_len,
                                    radius=e.prop_radius, topk=e.prop_topk,
                                    temperature=e.prop_temperature)
  return propagation.upsample_labels(out, gt.shape[1:])


def _resize_labels(labels, size):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  return np.asarray(Image.fromarray(labels).resize(size[::-1], Image.NEAREST))


def draw_overlay(path: str, frames, semantic, proposals, every: int = 4) -> None:
  """A PNG strip: frames on top, semantic masks, then instance proposals, in the
  DAVIS palette blended over the frames."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  colours = palette.davis_palette()
  picks = range(0, frames.shape[0], every)
  rows = []
  for labels in (None, semantic, proposals):
    row = []
    for t in picks:
      image = frames[t].astype(np.float32)
      if labels is not None:
        image = 0.45 * image + 0.55 * colours[labels[t]]
      row.append(image)
    rows.append(np.concatenate(row, axis=1))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.concatenate(rows, axis=0).astype(np.uint8)).save(path)


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Evaluate and print a table; writes WORKDIR/eval/results.csv, proposal PNGs
  and overlays. Returns {method: {metric: value}}."""
  e = config.eval
  root = e.data_path or os.path.join(workdir, "synthetic_data")
  if not e.data_path:
    synthetic.ensure_synthetic_davis(root, synthetic.SyntheticSpec(**config.data.synthetic.to_dict()))
  videos = davis.read_sequences(root, e.split)
  videos = videos[:e.max_videos] if e.max_videos else videos
  predictor = Predictor(config)
  methods = {"trained": trained_variables(config, workdir),
             "untrained": untrained_variables(config)}
  out_dir = os.path.join(workdir, EVAL_DIR)
  rows = {m: {"iou": [], "jf_discovery": [], "jf_propagation": []}
          for m in (*methods, "trivial")}
  for index, name in enumerate(videos):
    frames, gt_unsup, gt_semi = load_video(root, name)
    count = frames.shape[0]
    for method, variables in methods.items():
      outputs = predictor.clips(variables, frames)
      proposals, semantic = discovery.discover(
          outputs, config.data.num_frames, frames.shape[1:3], predictor.grid,
          e.instance_score, e.max_proposals, first_stage_only=e.first_stage_only,
          area_tau=config.loss.tau1, mask_tau=config.loss.valid_mask_tau)
      proposals, semantic = proposals[:count], semantic[:count]
      iou, jf = score_discovery(gt_unsup, proposals, e.unsupervised_matching)
      rows[method]["iou"].append(iou)
      rows[method]["jf_discovery"].append(jf)
      rows[method]["jf_propagation"].append(
          score_propagation(gt_semi, propagate(predictor, variables, frames, gt_semi, e)))
      if method == "trained":
        for t in range(count):
          palette.write_palette_png(os.path.join(out_dir, "discovery", name, f"{t:05d}.png"),
                                    proposals[t])
        if index < e.overlays:
          draw_overlay(os.path.join(out_dir, "overlays", f"{name}.png"), frames, semantic,
                       proposals)
    whole = np.ones_like(gt_unsup)
    iou, jf = score_discovery(gt_unsup, whole, e.unsupervised_matching)
    rows["trivial"]["iou"].append(iou)
    rows["trivial"]["jf_discovery"].append(jf)
    rows["trivial"]["jf_propagation"].append(
        score_propagation(gt_semi, np.repeat(gt_semi[:1], count, axis=0)))
  summary = {m: {k: float(np.mean(v)) for k, v in r.items()} for m, r in rows.items()}
  _report(summary, out_dir, e, len(videos), root)
  return summary


def _report(summary, out_dir, e, count, root) -> None:
  os.makedirs(out_dir, exist_ok=True)
  header = ["method", "single-object IoU", f"multi-object J&F ({e.unsupervised_matching} matching)",
            "label propagation J&F"]
  with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(header)
    for method, r in summary.items():
      writer.writerow([method, f"{r['iou']:.4f}", f"{r['jf_discovery']:.4f}",
                       f"{r['jf_propagation']:.4f}"])
  stages = "first stage only (SMTC-dagger)" if e.first_stage_only else "both stages"
  print(f"{count} videos of {root} ({e.split}), {stages}; multi-object J&F uses "
        f"{'the official once-per-video' if e.unsupervised_matching == 'video' else 'the per-frame (authors repo, NOT official)'} assignment")
  print(f"{'method':12s} {'IoU':>8s} {'J&F disc.':>10s} {'J&F prop.':>10s}")
  labels = {"trained": "trained", "untrained": "untrained", "trivial": "trivial*"}
  for method, r in summary.items():
    print(f"{labels[method]:12s} {r['iou']:8.3f} {r['jf_discovery']:10.3f} {r['jf_propagation']:10.3f}")
  print("* trivial: whole frame as one object (discovery); first frame's labels copied (propagation)")
