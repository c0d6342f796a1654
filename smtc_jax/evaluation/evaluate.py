"""`--mode=eval`: object discovery and label propagation on a benchmark
(`eval.benchmark`; the synthetic set by default), for the trained model and two
baselines that the evaluation computes itself: the untrained model (same seed)
and the trivial prediction (whole frame one object; the first frame's labels or
keypoints copied to every frame).

What each benchmark reports (paper Sec. 4):
  synthetic, davis2017   single-object IoU, multi-object J&F (unsupervised
                         annotations), label-propagation J&F (semi-supervised)
  davis2016, segtrack_v2, fbms   single-object IoU
  jhmdb                  PCK at eval.pck_thresholds (keypoint propagation)
  vip                    part mIoU (label propagation)
"""

import csv
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from smtc_jax import checkpoint, console, train
from smtc_jax.data import palette, synthetic
from smtc_jax.evaluation import davis, discovery, parts, pose, propagation, readers
from smtc_jax.models import smtc

EVAL_DIR = "eval"


def trained_variables(config, workdir: str):
  """The evaluated weights: WORKDIR/export if there, else the latest checkpoint."""
  export = os.path.join(workdir, checkpoint.EXPORT_DIR)
  if os.path.isdir(export):
    console.say(f"evaluating {config.eval.params} of {export}")
    tree = checkpoint.load_params(export)
    return train.model_variables(tree[config.eval.params], tree.get("batch_stats", {}))
  state = jax.device_get(train.latest_state(config, workdir))
  console.say(f"evaluating {config.eval.params} of the checkpoint at step {int(state.step)}")
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
    """Frames for label propagation keep their resolution (or are scaled so their
    short side is eval.prop_short_side), cut down to multiples of the encoder
    stride (the CRW protocol)."""
    stride = smtc.encoder_stride(self.config)
    short = self.config.eval.prop_short_side
    scale = short / min(image_size) if short else 1.0
    return tuple(max(stride, int(round(s * scale)) // stride * stride) for s in image_size)

  def features(self, variables, frames):
    """(F, h, w, D) encoder features of every frame at the propagation size."""
    small = discovery.resize_frames(frames, self.feature_size(frames.shape[1:3]))
    return jnp.stack([self._encode(variables, jnp.asarray(f[None, None]))[0, 0] for f in small])


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


TASKS = {
    "synthetic": ("iou", "jf_discovery", "jf_propagation"),
    "davis2017": ("iou", "jf_discovery", "jf_propagation"),
    "davis2016": ("iou",),
    "segtrack_v2": ("iou",),
    "fbms": ("iou",),
    "jhmdb": ("pck",),
    "vip": ("miou",),
}
DISCOVERY_TASKS = ("iou", "jf_discovery")
MASK_PROPAGATION_TASKS = ("jf_propagation", "miou")


def tasks_of(benchmark: str) -> tuple[str, ...]:
  if benchmark not in TASKS:
    raise ValueError(f"eval.benchmark must be one of {sorted(TASKS)}, got {benchmark!r}")
  return TASKS[benchmark]


def propagate_maps(predictor, variables, frames, first_maps, e):
  """(F, h, w, C) label maps propagated through the video's features from frame
  0's maps, `first_maps(grid) -> (h, w, C)`."""
  feats = predictor.features(variables, frames)
  return propagation.propagate_video(feats, first_maps(feats.shape[1:3]),
                                     video_len=e.prop_video_len, radius=e.prop_radius,
                                     topk=e.prop_topk, temperature=e.prop_temperature)


def propagate_masks(predictor, variables, frames, first_labels, num_labels: int, e):
  """(F, H, W) uint8 labels propagated from frame 0's (H, W) labels (void = none)."""
  size = predictor.feature_size(frames.shape[1:3])
  first = lambda grid: propagation.one_hot_on_grid(_resize_labels(first_labels, size),
                                                   num_labels, grid)
  out = propagate_maps(predictor, variables, frames, first, e)
  return propagation.upsample_labels(out, frames.shape[1:3])


def propagate_keypoints(predictor, variables, frames, first_keypoints, e):
  """((F, J, 2) pixel (x, y), (F, J) visible) from frame 0's (J, 2) keypoints."""
  image = frames.shape[1:3]
  first = lambda grid: pose.keypoint_maps(first_keypoints, image, grid, e.pose_sigma)
  out = np.asarray(propagate_maps(predictor, variables, frames, first, e))
  cells, visible = pose.decode_keypoints(out, e.pose_topk)
  return pose.to_image(cells, image, out.shape[1:3]), visible


def _resize_labels(labels, size):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  return np.asarray(Image.fromarray(labels).resize(size[::-1], Image.NEAREST))


class Scores:
  """One method's results over the videos, reduced as each benchmark's tool does:
  IoU averaged per video then over videos; J&F from every object's J and F
  means (the official global J&F-Mean); PCK pooled per joint over all frames;
  mIoU from one confusion matrix over all frames."""

  def __init__(self, thresholds):
    self.thresholds = tuple(thresholds)
    self.iou, self.distances, self.confusion = [], [], 0
    self.objects = {"jf_discovery": ([], []), "jf_propagation": ([], [])}
    self.per_video = []

  def add(self, video: str, values: dict) -> None:
    """values: iou -> float, jf_* -> (J, F) per object per frame, pck -> (F, J)
    normalised distances, miou -> confusion matrix."""
    row = {"video": video}
    for key, value in values.items():
      if key == "iou":
        self.iou.append(value)
        row[key] = value
      elif key in self.objects:
        j, f = value
        self.objects[key][0].extend(davis.statistics(x)[0] for x in j)
        self.objects[key][1].extend(davis.statistics(x)[0] for x in f)
        row[key] = davis.mean_jf(j, f)
      elif key == "pck":
        self.distances.append(value)
        row.update({f"pck@{a}": v for a, v in pose.pck(value, self.thresholds).items()})
      elif key == "miou":
        self.confusion = self.confusion + value
        row[key] = parts.mean_iou(value)
    self.per_video.append(row)

  def summary(self) -> dict:
    out = {}
    if self.iou:
      out["iou"] = float(np.mean(self.iou))
    for key, (j, f) in self.objects.items():
      if j:
        out[key] = float((np.mean(j) + np.mean(f)) / 2)
    if self.distances:
      out.update({f"pck@{a}": v for a, v in
                  pose.pck(np.concatenate(self.distances), self.thresholds).items()})
    if isinstance(self.confusion, np.ndarray):
      out["miou"] = parts.mean_iou(self.confusion)
    return out


def benchmark_data(config, workdir: str):
  """(root, video names, load) of the evaluated benchmark."""
  e = config.eval
  if e.benchmark == "synthetic":
    root = e.data_path or os.path.join(workdir, "synthetic_data")
    synthetic.ensure_synthetic_davis(root, synthetic.SyntheticSpec(**config.data.synthetic.to_dict()))
    names, load = readers.reader("davis2017")
  else:
    names, load = readers.reader(e.benchmark)
    root = e.data_path
    if not root:
      raise ValueError(f"eval.benchmark={e.benchmark} needs eval.data_path (the benchmark's folder)")
  videos = names(root, e.split)
  videos = videos[:e.max_videos] if e.max_videos else videos
  if not videos:
    raise ValueError(f"{root}: no video in split {e.split!r}")
  return root, videos, lambda name: load(root, e.split, name)


def _discovery_truth(video: readers.Video, tasks):
  """Ground truth of discovery: DAVIS-2017's unsupervised annotations (required
  for multi-object J&F: the semi-supervised ones label other objects), else the
  single-object labels."""
  if video.unsupervised_labels is not None:
    return video.unsupervised_labels
  if "jf_discovery" in tasks:
    raise FileNotFoundError(f"video {video.name} has no Annotations_unsupervised/480p folder: "
                            f"multi-object discovery is scored on DAVIS-2017's unsupervised "
                            f"annotations")
  return video.labels


def score_discovery(video, proposals, tasks, matching: str) -> dict:
  """Single-object IoU over annotated frames; multi-object (J, F) per object."""
  truth = _discovery_truth(video, tasks)[video.annotated]
  proposals = proposals[video.annotated]
  out = {}
  if "iou" in tasks:
    foreground = (truth > 0) & (truth != davis.VOID_LABEL)
    void = truth == davis.VOID_LABEL
    out["iou"] = float(np.mean(davis.j_measures(foreground, proposals > 0, void)))
  if "jf_discovery" in tasks:
    out["jf_discovery"] = davis.evaluate_sequence(truth, proposals, "unsupervised", matching)
  return out


def score_masks(video, predicted, tasks) -> dict:
  """Propagated labels: semi-supervised J&F (first and last frames excluded) and/or
  part confusion (annotated frames after the first)."""
  out = {}
  if "jf_propagation" in tasks:
    gt = video.labels
    out["jf_propagation"] = davis.evaluate_sequence(gt[1:-1], predicted[1:-1], "semi-supervised",
                                                    num_objects=davis.first_frame_objects(gt))
  if "miou" in tasks:
    scored = video.annotated.copy()
    scored[0] = False
    out["miou"] = parts.confusion(video.labels[scored], predicted[scored],
                                  readers.VIP_NUM_CLASSES)
  return out


def _num_labels(video, tasks) -> int:
  if "miou" in tasks:
    return readers.VIP_NUM_CLASSES
  return davis.first_frame_objects(video.labels) + 1


def evaluate_method(predictor, variables, video, tasks, e, discovery_args):
  """Scores of one model on one video, and its predictions: {'discovery': (F, H, W)
  proposals, 'semantic': (F, H, W), 'propagation': (F, H, W) labels, 'keypoints':
  ((F, J, 2), (F, J) visible)}, those the benchmark's tasks produce."""
  values, predictions = {}, {}
  count = video.frames.shape[0]
  if any(t in tasks for t in DISCOVERY_TASKS):
    outputs = predictor.clips(variables, video.frames)
    proposals, semantic = discovery.discover(outputs, predictor.config.data.num_frames,
                                             video.frames.shape[1:3], predictor.grid,
                                             **discovery_args)
    predictions["discovery"], predictions["semantic"] = proposals[:count], semantic[:count]
    values.update(score_discovery(video, predictions["discovery"], tasks,
                                  e.unsupervised_matching))
  if any(t in tasks for t in MASK_PROPAGATION_TASKS):
    predictions["propagation"] = propagate_masks(predictor, variables, video.frames,
                                                 video.labels[0], _num_labels(video, tasks), e)
    values.update(score_masks(video, predictions["propagation"], tasks))
  if "pck" in tasks:
    keypoints, visible = propagate_keypoints(predictor, variables, video.frames,
                                             video.keypoints[0], e)
    predictions["keypoints"] = keypoints, visible
    values["pck"] = pose.normalised_distances(keypoints, video.keypoints, visible)
  return values, predictions


def write_predictions(out_dir: str, video, predictions: dict, overlay: bool) -> None:
  """Masks as palette PNGs in the DAVIS layout (<kind>/<video>/<frame>.png, frames
  numbered from 00000), keypoints as keypoints/<video>.npz (xy, visible), and
  the overlay strip."""
  for kind in ("discovery", "propagation"):
    for t, labels in enumerate(predictions.get(kind, ())):
      palette.write_palette_png(os.path.join(out_dir, kind, video.name, f"{t:05d}.png"), labels)
  if "keypoints" in predictions:
    os.makedirs(os.path.join(out_dir, "keypoints"), exist_ok=True)
    xy, visible = predictions["keypoints"]
    np.savez(os.path.join(out_dir, "keypoints", f"{video.name}.npz"), xy=xy, visible=visible)
  if overlay and "discovery" in predictions:
    draw_overlay(os.path.join(out_dir, "overlays", f"{video.name}.png"), video.frames,
                 predictions["semantic"], predictions["discovery"])


def evaluate_trivial(video, tasks, e):
  """Whole frame = one object; frame 0's labels / keypoints copied to every frame."""
  values = {}
  count = video.frames.shape[0]
  if any(t in tasks for t in DISCOVERY_TASKS):
    values.update(score_discovery(video, np.ones(video.frames.shape[:3], np.uint8), tasks,
                                  e.unsupervised_matching))
  if any(t in tasks for t in MASK_PROPAGATION_TASKS):
    first = np.where(video.labels[0] == davis.VOID_LABEL, 0, video.labels[0])
    values.update(score_masks(video, np.repeat(first[None], count, axis=0), tasks))
  if "pck" in tasks:
    copied = np.repeat(video.keypoints[:1], count, axis=0)
    values["pck"] = pose.normalised_distances(copied, video.keypoints,
                                              np.ones(copied.shape[:2], bool))
  return values


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Evaluate and print a table; writes WORKDIR/eval/<benchmark>/results.csv,
  per_video.csv, the trained model's predictions and overlays (one folder per
  benchmark, so one evaluation never overwrites another's). Returns
  {method: {metric: value}}."""
  e = config.eval
  tasks = tasks_of(e.benchmark)
  root, names, load = benchmark_data(config, workdir)
  predictor = Predictor(config)
  methods = {"trained": trained_variables(config, workdir),
             "untrained": untrained_variables(config)}
  discovery_args = dict(score_threshold=e.instance_score, max_proposals=e.max_proposals,
                        first_stage_only=e.first_stage_only, area_tau=config.loss.tau1,
                        mask_tau=config.loss.valid_mask_tau)
  out_dir = os.path.join(workdir, EVAL_DIR, e.benchmark)
  scores = {m: Scores(e.pck_thresholds) for m in (*methods, "trivial")}
  began = time.time()
  for index, name in enumerate(names):
    video = load(name)
    for method, variables in methods.items():
      values, predictions = evaluate_method(predictor, variables, video, tasks, e,
                                            discovery_args)
      scores[method].add(name, values)
      if method == "trained":
        write_predictions(out_dir, video, predictions, overlay=index < e.overlays)
    scores["trivial"].add(name, evaluate_trivial(video, tasks, e))
    eta = (time.time() - began) / (index + 1) * (len(names) - index - 1)
    console.say(f"evaluated {name} ({index + 1}/{len(names)}) | ETA {eta / 60:.1f} min")
  summary = {m: s.summary() for m, s in scores.items()}
  _report(summary, scores, out_dir, e, len(names), root)
  return summary


COLUMNS = {"iou": "single-object IoU", "jf_discovery": "multi-object J&F",
           "jf_propagation": "label propagation J&F", "miou": "part mIoU"}


def _column_name(key: str, e) -> str:
  if key == "jf_discovery":
    return f"{COLUMNS[key]} ({e.unsupervised_matching} matching)"
  return COLUMNS.get(key, key.upper())


def _report(summary, scores, out_dir, e, count, root) -> None:
  os.makedirs(out_dir, exist_ok=True)
  keys = list(summary["trained"])
  with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["method"] + [_column_name(k, e) for k in keys])
    for method, row in summary.items():
      writer.writerow([method] + [f"{row[k]:.4f}" for k in keys])
  with open(os.path.join(out_dir, "per_video.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["method", "video"] + keys)
    for method, s in scores.items():
      for row in s.per_video:
        writer.writerow([method, row["video"]] + [f"{row[k]:.4f}" for k in keys])
  print(f"{e.benchmark}: {count} videos of {root} ({e.split})")
  if any(k in keys for k in DISCOVERY_TASKS):
    print("discovery with", "the first stage only (SMTC-dagger)" if e.first_stage_only
          else "both slot-attention stages")
  if "jf_discovery" in keys:
    protocol = ("the official once-per-video" if e.unsupervised_matching == "video"
                else "the per-frame (authors' repo, NOT official)")
    print(f"multi-object J&F uses {protocol} assignment")
  short = {"iou": "IoU", "jf_discovery": "J&F disc.", "jf_propagation": "J&F prop.",
           "miou": "mIoU"}
  print(f"{'method':12s} " + " ".join(f"{short.get(k, k.upper()):>10s}" for k in keys))
  labels = {"trained": "trained", "untrained": "untrained", "trivial": "trivial*"}
  for method, row in summary.items():
    print(f"{labels[method]:12s} " + " ".join(f"{row[k]:10.3f}" for k in keys))
  print("* trivial: whole frame as one object (discovery); frame 0's labels or keypoints "
        "copied to every frame (propagation)")
  print(f"results in {out_dir}: results.csv, per_video.csv and the trained model's predictions")
