"""The evaluated model: its weights (the workdir's newest, read alone) and its
forward passes (clips -> proposals, frames -> features -> propagated labels).

Weights are read without building an optimizer or reading init.checkpoint:
the latest checkpoint's params, EMA params and BatchNorm statistics (an Orbax
partial restore), or WORKDIR/export, whichever holds the later training step.
"""

import dataclasses
import functools
import os

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from smtc_jax import checkpoint
from smtc_jax.evaluation import discovery, pose, propagation
from smtc_jax.models import smtc

EVALUATED_PARAMS = ("params", "ema_params")  # eval.params: student | teacher
# Discovery as the paper infers it (Sec. 3.5, 4.2): every eq. 11 candidate kept, no
# background rule, each proposal's id its instance slot's.
PAPER_INFERENCE = {"candidates": "eq11", "background": "none", "tracks": "slots"}


def uses_paper_inference(config: ml_collections.ConfigDict) -> bool:
  return all(config.eval[k] == v for k, v in PAPER_INFERENCE.items())


def paper_inference_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` whose discovery follows the paper (PAPER_INFERENCE)."""
  paper = ml_collections.ConfigDict(config.to_dict())
  paper.eval.update(PAPER_INFERENCE)
  return paper


@dataclasses.dataclass(frozen=True)
class Weights:
  """Where evaluated weights come from: 'checkpoint', 'export' or 'init' (the
  untrained model); the training step (None: unknown, e.g. converted from
  PyTorch); the folder (empty for 'init')."""
  source: str
  step: int | None
  path: str = ""

  def describe(self) -> str:
    step = "step unknown" if self.step is None else f"step {self.step}"
    return f"{self.source} ({step}{', ' + self.path if self.path else ''})"


def _export_step(tree) -> int | None:
  return int(tree["step"]) if "step" in tree else None


def trained_variables(config: ml_collections.ConfigDict, workdir: str, model=None):
  """(variables, Weights) of the workdir's newest readable trained weights: the
  newest checkpoint that reads back or WORKDIR/export, whichever has the later
  step (the export on a tie: the same weights). An export without a step
  (converted from PyTorch) counts as older than any checkpoint. Weights trained
  under other model fields than `config`'s are refused (run_config.ConfigMismatch)
  before they are read. eval.params picks student or teacher. `model`: the
  config's model if already built."""
  if config.eval.params not in EVALUATED_PARAMS:
    raise ValueError(f"eval.params must be one of {EVALUATED_PARAMS}, got {config.eval.params!r}")
  export_dir = os.path.join(workdir, checkpoint.EXPORT_DIR)
  export = checkpoint.load_params(export_dir) if os.path.isdir(export_dir) else None
  export_step = None if export is None else _export_step(export)
  tree = None
  if checkpoint.latest_step(workdir) is not None:
    model = model or smtc.build_model(config)
    # Only checkpoints newer than the export count; if none of those reads back, the export.
    tree = checkpoint.latest_weights(
        workdir, smtc.abstract_variables(config, model), config,
        above=export_step, fallback=f"the export {export_dir} (step {export_step})"
        if export is not None else "")
  if tree is not None:
    step = int(tree["step"])  # the newest readable checkpoint's
    weights = Weights("checkpoint", step,
                      os.path.join(workdir, checkpoint.CHECKPOINT_DIR, str(step)))
    if export is not None:
      logging.warning("%s holds step %s, older than checkpoint step %d: evaluating the checkpoint",
                      export_dir, export_step, step)
  elif export is not None:
    checkpoint.check_trained_model(export_dir, config)
    tree, weights = export, Weights("export", export_step, export_dir)
  else:
    raise FileNotFoundError(f"{workdir} has neither checkpoints ({checkpoint.CHECKPOINT_DIR}/) "
                            f"nor an export ({checkpoint.EXPORT_DIR}/) to evaluate")
  if config.eval.params not in tree:
    raise ValueError(f"{weights.path} holds no {config.eval.params!r} (it has {sorted(tree)})")
  variables = smtc.model_variables(tree[config.eval.params], tree.get("batch_stats", {}))
  return variables, weights


UNTRAINED = Weights("init", 0)


def untrained_variables(config: ml_collections.ConfigDict, model=None):
  """(variables, Weights) of the model at random initialisation, those of a
  training's step 0 (same seed, jitted as training jits it: 3x faster than
  eager and the same bits; a run with init.checkpoint starts from those
  weights instead). `model`: the config's model if already built."""
  init = functools.partial(smtc.init_variables, config, model or smtc.build_model(config))
  variables, _ = jax.jit(init)(jax.random.PRNGKey(config.seed))
  return variables, UNTRAINED


class Predictor:
  """Model forward for evaluation: clips -> outputs and proposals, frames ->
  encoder features (eval.prop_features)."""

  def __init__(self, config: ml_collections.ConfigDict, model=None):
    """`model`: the config's model if already built (another Predictor's)."""
    self.config = config
    self.model = model or smtc.build_model(config)
    self.stride = smtc.encoder_stride(config)
    self.size = tuple(config.eval.discovery_resolution or config.data.resolution)
    self.grid = tuple(r // self.stride for r in self.size)
    self.candidates = discovery.Candidates.from_config(config)
    self.tracking = discovery.Tracking.from_config(config)
    features = config.eval.prop_features
    smtc.check_features(features, self.model.encoder, "eval.prop_features")
    rngs = smtc.model_rngs(jax.random.PRNGKey(config.seed))
    on_frames = lambda variables, clip, **kwargs: smtc.apply_on_frames(
        self.model, config, variables["params"], variables.get("batch_stats"), clip, **kwargs)
    self._apply = jax.jit(lambda variables, clip: on_frames(variables, clip, rngs=rngs))
    self._encode = jax.jit(lambda variables, clip: on_frames(
        variables, clip, features=features, method=smtc.SMTC.encode))

  def clips(self, variables, frames):
    """Model outputs of the video's consecutive clips at the discovery size
    (eval.discovery_resolution), with a leading clip axis (C, T, ...)."""
    small = discovery.resize_frames(frames, self.size)
    clips = discovery.clips_of(small, self.config.data.num_frames)
    outs = [self._apply(variables, jnp.asarray(c[None])) for c in clips]
    return jax.tree.map(lambda *x: np.concatenate([np.asarray(v) for v in x]), *outs)

  def proposals(self, variables, frames):
    """(proposals, semantic): (F, H, W) uint8 label maps of a (F, H, W, 3) video."""
    return self.proposals_of_clips(self.clips(variables, frames), frames.shape[:3])

  def proposals_of_clips(self, clips, video_shape):
    """(proposals, semantic) from the model outputs of a video's clips (`clips`),
    by this predictor's inference rules; video_shape: (F, H, W)."""
    e = self.config.eval
    return discovery.discover(
        clips, video_shape[0], video_shape[1:3], self.grid, self.candidates, e.max_proposals,
        e.first_stage_only, background=e.background, border_ratio=e.border_ratio,
        tracking=self.tracking)

  def candidates_of_clips(self, clips, num_frames: int):
    """Each frame's (K_t, h, w) candidate masks, what the authors' protocol scores."""
    return discovery.frame_candidates(clips, num_frames, self.grid, self.candidates,
                                      self.config.eval.first_stage_only)

  def feature_size(self, image_size):
    """Frames for label propagation keep their resolution (or are scaled so their
    short side is eval.prop_short_side), cut down to multiples of the encoder
    stride (the CRW protocol)."""
    short, stride = self.config.eval.prop_short_side, self.stride
    scale = short / min(image_size) if short else 1.0
    return tuple(max(stride, int(round(s * scale)) // stride * stride) for s in image_size)

  def features(self, variables, frames):
    """(F, h, w, D) encoder features (eval.prop_features) of every frame at the
    propagation size."""
    small = discovery.resize_frames(frames, self.feature_size(frames.shape[1:3]))
    return jnp.stack([self._encode(variables, jnp.asarray(f[None, None]))[0, 0] for f in small])


def propagate_maps(predictor, variables, frames, first_maps):
  """(F, h, w, C) label maps propagated through the video's features from frame
  0's maps, `first_maps(grid) -> (h, w, C)`."""
  e = predictor.config.eval
  feats = predictor.features(variables, frames)
  return propagation.propagate_video(feats, first_maps(feats.shape[1:3]),
                                     video_len=e.prop_video_len, radius=e.prop_radius,
                                     topk=e.prop_topk, temperature=e.prop_temperature)


def propagate_masks(predictor, variables, frames, first_labels, num_labels: int):
  """(F, H, W) uint8 labels propagated from frame 0's (H, W) labels (void = none)."""
  size = predictor.feature_size(frames.shape[1:3])
  first = lambda grid: propagation.one_hot_on_grid(_resize_labels(first_labels, size),
                                                   num_labels, grid)
  out = propagate_maps(predictor, variables, frames, first)
  return propagation.upsample_labels(out, frames.shape[1:3])


def propagate_keypoints(predictor, variables, frames, first_keypoints):
  """((F, J, 2) pixel (x, y), (F, J) visible) from frame 0's (J, 2) keypoints."""
  e = predictor.config.eval
  image = frames.shape[1:3]
  first = lambda grid: pose.keypoint_maps(first_keypoints, image, grid, e.pose_sigma)
  out = np.asarray(propagate_maps(predictor, variables, frames, first))
  cells, visible = pose.decode_keypoints(out, e.pose_topk)
  return pose.to_image(cells, image, out.shape[1:3]), visible


def _resize_labels(labels, size):
  return np.asarray(Image.fromarray(labels).resize(size[::-1], Image.NEAREST))
