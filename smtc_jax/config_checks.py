"""Start-up checks of a config, one function per config section.

`main` runs `problems(config, mode, workdir)` once, before anything is built or
written; the modules then trust their fields instead of raising from inside
jit tracing, hours into a run or after a synthetic set was generated. Each
check returns its problems as one-line strings that name the field, its value
and what is allowed. A new section adds a `check_<section>(config)` function
and one line in `problems`.
"""

import importlib.util
import os

import ml_collections

from smtc_jax import checkpoint, losses, matching, predict
from smtc_jax.data import photo_videos, video_io
from smtc_jax.data import pipeline
from smtc_jax.data import sources
from smtc_jax.data import synthetic
from smtc_jax.evaluation import davis, discovery, evaluate, monitor, predictor, readers, scores
from smtc_jax.models import resnet, slot_attention, smtc, vit
from smtc_jax.training import state as state_lib


class ConfigError(ValueError):
  """A config that cannot run; its message holds one line per problem."""


def _get(config: ml_collections.ConfigDict, field: str):
  node = config
  for key in field.split("."):
    node = node[key]
  return node


def one_of(config, field: str, allowed) -> list[str]:
  value = _get(config, field)
  if value in allowed:
    return []
  return [f"{field}={value!r} is not one of {', '.join(repr(a) for a in allowed)}"]


def at_least(config, field: str, low) -> list[str]:
  value = _get(config, field)
  return [] if value >= low else [f"{field}={value!r} must be >= {low}"]


def above(config, field: str, low) -> list[str]:
  value = _get(config, field)
  return [] if value > low else [f"{field}={value!r} must be > {low}"]


def within(config, field: str, low, high) -> list[str]:
  """low <= value <= high."""
  value = _get(config, field)
  return [] if low <= value <= high else [f"{field}={value!r} must lie in [{low}, {high}]"]


def _stride_multiples(size, stride: int) -> bool:
  """Whether size is (H, W), each a positive multiple of the encoder stride."""
  return len(size) == 2 and all(r >= stride and r % stride == 0 for r in size)


def _discovery_size(config, field: str, default: str) -> list[str]:
  """A size the model runs discovery at: () (`default`) or (H, W), multiples
  of the encoder stride (checked once the model's own fields are sound)."""
  size = tuple(_get(config, field))
  if not size or check_model(config):
    return []
  stride = smtc.encoder_stride(config)
  if _stride_multiples(size, stride):
    return []
  return [f"{field}={size!r} must be () ({default}) or two multiples of the encoder "
          f"stride {stride}"]


def _all_within(config, field: str, low, high) -> list[str]:
  values = tuple(_get(config, field))
  if all(low <= v <= high for v in values):
    return []
  return [f"{field}={values!r}: every value must lie in [{low}, {high}]"]


def _values(config, field: str, names: str, count: int, low, high, open_low=False) -> list[str]:
  """`count` values (`names` says which), each in [low, high] (or (low, high]
  with `open_low`): the pipeline and the model unpack exactly that many."""
  values = tuple(_get(config, field))
  fits = lambda v: (low < v if open_low else low <= v) and v <= high
  if len(values) == count and all(fits(v) for v in values):
    return []
  span = f"({low}, {high})" if open_low else f"[{low}, {high}]"
  return [f"{field}={values!r} must be {count} values ({names}), each in {span}"]


def _below_one(config, field: str) -> list[str]:
  value = _get(config, field)
  return [] if 0.0 <= value < 1.0 else [f"{field}={value!r} must be in [0, 1)"]


def _ordered_pair(config, field: str, low, high) -> list[str]:
  """(a, b) with low < a <= b <= high."""
  pair = tuple(_get(config, field))
  if len(pair) == 2 and low < pair[0] <= pair[1] <= high:
    return []
  return [f"{field}={pair!r} must be (a, b) with {low} < a <= b <= {high}"]


def check_model(config) -> list[str]:
  """Encoder, fusion and slot-attention options (Sec. 3.1-3.3)."""
  m = config.model
  out = [*one_of(config, "model.encoder", smtc.ENCODERS),
         *one_of(config, "model.features", smtc.SLOT_FEATURES),
         *one_of(config, "model.corr_partner", smtc.CORR_PARTNERS),
         *one_of(config, "model.correlation", smtc.CORRELATIONS),
         *at_least(config, "model.corr_radius", 1), *above(config, "model.corr_temperature", 0.0),
         *one_of(config, "model.fusion", smtc.FUSIONS),
         *one_of(config, "model.slot_input", smtc.SLOT_INPUTS),
         *one_of(config, "model.slot_update", slot_attention.SLOT_UPDATES),
         *one_of(config, "model.mask_threshold_on", slot_attention.MASK_THRESHOLDS),
         *one_of(config, "model.stages", slot_attention.STAGES),
         *one_of(config, "model.sample_grad", slot_attention.SAMPLE_GRADS),
         *one_of(config, "model.dtype", smtc.DTYPES),
         *one_of(config, "model.resnet.feature_stage", resnet.FEATURE_STAGES),
         *at_least(config, "model.num_semantics", 1),
         *within(config, "model.num_instances", 1, matching.MAX_SIZE),
         *at_least(config, "model.num_iterations", 1), *at_least(config, "model.mlp_min_hidden", 1),
         *at_least(config, "model.object_head_ratio", 1), *above(config, "model.attn_eps", 0),
         *at_least(config, "model.vit.patch_size", 1), *at_least(config, "model.vit.depth", 1),
         *at_least(config, "model.vit.num_heads", 1), *at_least(config, "model.vit.pretrain_grid", 1),
         *_below_one(config, "model.vit.drop_path_rate"),
         *one_of(config, "model.vit.layer_scale", vit.LAYER_SCALES),
         *at_least(config, "model.vit.num_registers", 0),
         *one_of(config, "model.vit.attention", vit.ATTENTION_IMPLEMENTATIONS),
         *at_least(config, "model.vit.attention_pad", 1),
         *at_least(config, "model.vit.attention_block", 0)]
  if m.mask_threshold_on == "prob":
    out += within(config, "model.tau", 0.0, 1.0)
  if m.vit.num_heads >= 1 and m.vit.dim % m.vit.num_heads:
    out.append(f"model.vit.dim={m.vit.dim} is not divisible by model.vit.num_heads="
               f"{m.vit.num_heads}")
  if m.vit.attention == "cudnn" and m.dtype != "bfloat16":
    out.append(f"model.vit.attention='cudnn' needs model.dtype='bfloat16' (cuDNN's fused "
               f"attention takes 16-bit inputs), got {m.dtype!r}")
  if m.features == "last_keys" and m.encoder != "vit":
    out.append(f"model.features='last_keys' needs model.encoder='vit', got {m.encoder!r}")
  return out


def check_loss(config) -> list[str]:
  """The objectives of Sec. 3.4 (eq. 8-13)."""
  out = [*one_of(config, "loss.sinkhorn_marginals", losses.SINKHORN_MARGINALS),
         *one_of(config, "loss.instance_form", losses.INSTANCE_FORMS),
         *at_least(config, "loss.sem_weight", 0.0), *at_least(config, "loss.reg_weight", 0.0),
         *at_least(config, "loss.obj_weight", 0.0), *above(config, "loss.sinkhorn_epsilon", 0.0),
         *at_least(config, "loss.sinkhorn_iters", 1), *at_least(config, "loss.cycle_weight", 0.0),
         *above(config, "loss.cycle_temperature", 0.0),
         *above(config, "loss.teacher_temperature", 0.0),
         *at_least(config, "loss.teacher_centre_steps", 0),
         *within(config, "loss.teacher_centre_share", 0.0, 1.0),
         *one_of(config, "loss.teacher_centre_gate", losses.TEACHER_CENTRE_GATES),
         *within(config, "loss.valid_mask_tau", 0.0, 1.0), *within(config, "loss.tau1", 0.0, 1.0),
         *within(config, "loss.tau2", -1.0, 1.0), *at_least(config, "loss.margin", 0.0),
         *above(config, "loss.eps", 0.0)]
  l = config.loss
  if config.model.stages == "instance" and (l.sem_weight or l.reg_weight):
    out.append("model.stages='instance' has no semantic masks: set loss.sem_weight and "
               "loss.reg_weight to 0")
  return out


def check_data(config, mode: str) -> list[str]:
  """Where the videos come from, clip sampling and augmentation; the training
  videos themselves are required in train mode only."""
  d = config.data
  out = [*one_of(config, "data.source", pipeline.SOURCES),
         *one_of(config, "data.layout", sources.LAYOUTS),
         *at_least(config, "data.num_frames", 1), *at_least(config, "data.gap", 1),
         *one_of(config, "data.clip_sampling", pipeline.CLIP_SAMPLINGS),
         *_values(config, "data.mean", "R, G, B", 3, 0.0, 1.0),
         *_values(config, "data.std", "R, G, B", 3, 0.0, float("inf"), open_low=True),
         *at_least(config, "data.batch_size", 1), *at_least(config, "data.num_workers", 0),
         *at_least(config, "data.prefetch", 0),
         *_ordered_pair(config, "data.augment.crop_scale", 0.0, 1.0),
         *_ordered_pair(config, "data.augment.crop_ratio", 0.0, float("inf")),
         *_ordered_pair(config, "data.augment.blur_sigma", 0.0, float("inf")),
         *within(config, "data.augment.hflip_prob", 0.0, 1.0),
         *within(config, "data.augment.jitter_prob", 0.0, 1.0),
         *within(config, "data.augment.gray_prob", 0.0, 1.0),
         *within(config, "data.augment.blur_prob", 0.0, 1.0),
         *_values(config, "data.augment.jitter", "brightness, contrast, saturation, hue", 4,
                  0.0, 1.0),
         *within(config, "data.augment.blur_kernel_frac", 0.0, 1.0),
         *one_of(config, "data.augment.hue_space", tuple(sorted(pipeline.HUE_ROTATIONS))),
         *at_least(config, "data.synthetic.num_train", 1),
         *at_least(config, "data.synthetic.num_val", 0), *at_least(config, "data.synthetic.size", 1),
         *at_least(config, "data.synthetic.max_objects", 1),
         *within(config, "data.synthetic.lighting", 0.0, 1.0),
         *at_least(config, "data.synthetic.noise", 0.0),
         *one_of(config, "data.synthetic.kind", synthetic.KINDS)]
  if d.source == "synthetic" and d.synthetic.kind in photo_videos.KINDS:
    if importlib.util.find_spec("skimage") is None:
      out.append(f"data.synthetic.kind={d.synthetic.kind!r} reads scikit-image's photographs: "
                 f"pip install -e '.[photo]'")
  if not d.split:
    out.append("data.split is empty")
  if not check_model(config):  # the encoder's stride is defined for a valid model section
    stride = smtc.encoder_stride(config)
    if not _stride_multiples(d.resolution, stride):
      out.append(f"data.resolution={tuple(d.resolution)!r} must be two multiples of the "
                 f"encoder stride {stride}")
  if mode not in ("train", "pretrain"):
    return out
  if d.num_frames == 1:
    out.append("data.num_frames=1 must be >= 2 in training (L_sem and L_obj compare a clip's "
               "frames)")
  if d.source == "frames" and not d.path:
    out.append("data.source='frames' needs data.path (a DAVIS or YouTube-VOS folder)")
  if d.source == "synthetic" and d.synthetic.num_frames < d.num_frames:
    out.append(f"data.synthetic.num_frames={d.synthetic.num_frames} is below "
               f"data.num_frames={d.num_frames}: no synthetic video could give a clip")
  if d.source == "tfds":
    if not d.tfds_name:
      out.append("data.source='tfds' needs data.tfds_name")
    if importlib.util.find_spec("tensorflow_datasets") is None:
      out.append("data.source='tfds' needs tensorflow-datasets: pip install -e '.[tfds]'")
  return out


def check_optim(config) -> list[str]:
  """AdamW and its schedule."""
  return [*above(config, "optim.learning_rate", 0.0),
          *within(config, "optim.final_lr_ratio", 0.0, 1.0),
          *at_least(config, "optim.warmup_steps", 0), *at_least(config, "optim.weight_decay", 0.0),
          *within(config, "optim.b1", 0.0, 1.0), *within(config, "optim.b2", 0.0, 1.0),
          *above(config, "optim.eps", 0.0), *at_least(config, "optim.encoder_lr_mult", 0.0),
          *at_least(config, "optim.grad_iter", 0), *at_least(config, "optim.grad_clip_norm", 0.0)]


def check_train(config) -> list[str]:
  """The loop: length, EMA, logging and checkpoints."""
  return [*at_least(config, "train.num_steps", 1), *within(config, "train.ema_momentum", 0.0, 1.0),
          *one_of(config, "train.ema_scope", state_lib.EMA_SCOPES),
          *at_least(config, "train.log_every", 1),
          *at_least(config, "train.checkpoint_every", 1),
          *at_least(config, "train.keep_checkpoints", 1), *at_least(config, "train.microbatch", 0),
          *at_least(config, "train.eval_every", 0), *at_least(config, "train.eval_videos", 1),
          *_discovery_size(config, "train.eval_resolution", "eval.discovery_resolution")]


def check_pretrain(config) -> list[str]:
  """Encoder pretraining (smtc_jax/pretrain.py); checked when it runs."""
  p = config.pretrain
  out = at_least(config, "pretrain.num_steps", 0)
  if not p.num_steps:
    return out
  out += [*at_least(config, "pretrain.batch_size", 1), *above(config, "pretrain.learning_rate", 0.0),
          *at_least(config, "pretrain.warmup_steps", 0),
          *at_least(config, "pretrain.weight_decay", 0.0),
          *above(config, "pretrain.grad_clip_norm", 0.0),
          *within(config, "pretrain.ema_momentum", 0.0, 1.0),
          *at_least(config, "pretrain.num_prototypes", 2), *at_least(config, "pretrain.head_hidden", 1),
          *at_least(config, "pretrain.head_bottleneck", 1),
          *above(config, "pretrain.temperature", 0.0),
          *above(config, "pretrain.sinkhorn_epsilon", 0.0),
          *at_least(config, "pretrain.sinkhorn_iters", 1),
          *_ordered_pair(config, "pretrain.crop_scale", 0.0, 1.0),
          *_ordered_pair(config, "pretrain.local_side", 0.0, 1.0),
          *at_least(config, "pretrain.frame_gap", 0)]
  if config.model.encoder != "vit":
    out.append(f"pretrain.num_steps={p.num_steps} pretrains the ViT; model.encoder is "
               f"{config.model.encoder!r}")
  elif not check_model(config):
    stride = smtc.encoder_stride(config)
    if not _stride_multiples(p.resolution, stride):
      out.append(f"pretrain.resolution={tuple(p.resolution)!r} must be two multiples of the "
                 f"encoder stride {stride}")
  return out


def check_init(config, mode: str) -> list[str]:
  """Initial weights: a params checkpoint that must exist (when local) where it
  is read, in training; evaluation and export read the workdir's weights."""
  i = config.init
  out = one_of(config, "init.scope", checkpoint.INIT_SCOPES)
  reads = mode in ("train", "pretrain")
  if reads and i.checkpoint and "://" not in i.checkpoint and not os.path.isdir(i.checkpoint):
    out.append(f"init.checkpoint={i.checkpoint!r} is not a folder")
  return out


def check_eval(config, mode: str) -> list[str]:
  """Evaluation options; the benchmark's folder is required in eval mode only."""
  e = config.eval
  out = [*one_of(config, "eval.benchmark", tuple(evaluate.TASKS)),
         *one_of(config, "eval.unsupervised_matching", davis.MATCHINGS),
         *one_of(config, "eval.protocol", scores.PROTOCOLS),
         *one_of(config, "eval.params", predictor.EVALUATED_PARAMS),
         *one_of(config, "eval.candidates", discovery.CANDIDATE_RULES),
         *one_of(config, "eval.background", discovery.BACKGROUND_RULES),
         *one_of(config, "eval.tracks", discovery.TRACK_RULES),
         *at_least(config, "eval.border_ratio", 0.0),
         *within(config, "eval.track_min_area", 0.0, 1.0), *at_least(config, "eval.track_max_gap", 0),
         *within(config, "eval.track_min_iou", 0.0, 1.0),
         *within(config, "eval.track_merge_share", 0.0, 1.0),
         *at_least(config, "eval.track_merge_min_frames", 1),
         *within(config, "eval.track_gap_radius", 0.0, 0.5),
         *one_of(config, "eval.prop_features", tuple(smtc.FEATURES)),
         *at_least(config, "eval.max_videos", 0),
         *at_least(config, "eval.prop_video_len", 1),
         *above(config, "eval.prop_radius", 0.0), *at_least(config, "eval.prop_topk", 1),
         *above(config, "eval.prop_temperature", 0.0),
         *at_least(config, "eval.prop_short_side", 0), *above(config, "eval.pose_sigma", 0.0),
         *at_least(config, "eval.pose_topk", 1), *at_least(config, "eval.overlays", 0),
         *_all_within(config, "eval.pck_thresholds", 0.0, float("inf"))]
  if not 1 <= e.max_proposals <= discovery.MAX_PROPOSALS:
    out.append(f"eval.max_proposals={e.max_proposals!r} must lie in [1, {discovery.MAX_PROPOSALS}] "
               f"(proposals are 8-bit label maps)")
  slots = config.model.num_semantics * config.model.num_instances
  if e.protocol == "authors" and slots > davis.AUTHORS_MAX_PROPOSALS:
    out.append(f"eval.protocol='authors' scores at most {davis.AUTHORS_MAX_PROPOSALS} candidates "
               f"per frame; model.num_semantics x model.num_instances = {slots}")
  out += _discovery_size(config, "eval.discovery_resolution", "the training size")
  if e.benchmark == "jhmdb":
    out += one_of(config, "eval.split", readers.JHMDB_SPLITS)
  watched = (mode == "train" and config.train.eval_every and monitor.watched_tasks(e.benchmark))
  if (mode == "eval" or watched) and e.benchmark in evaluate.TASKS and e.benchmark != "synthetic":
    if not e.data_path:
      reader = "" if mode == "eval" else ", which the watch reads every train.eval_every steps"
      out.append(f"eval.benchmark={e.benchmark!r} needs eval.data_path (the benchmark's "
                 f"folder{reader})")
    elif "://" not in e.data_path and not os.path.isdir(e.data_path):
      out.append(f"eval.data_path={e.data_path!r} is not a folder")
  return out


def _folder_problem(path: str, name: str) -> list[str]:
  """Why the local folder `path` (named `name` in the line) cannot be used or
  made: it, or the nearest of its parents that exists, is not a writable folder."""
  if os.path.exists(path):
    if not os.path.isdir(path):
      return [f"{name} is not a folder"]
    return [] if os.access(path, os.W_OK | os.X_OK) else [f"{name} is not writable"]
  parent = os.path.dirname(os.path.abspath(path))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    return [f"{name} cannot be made: {parent} is not a folder"]
  if not os.access(parent, os.W_OK | os.X_OK):
    return [f"{name} cannot be made: {parent} is not writable"]
  return []


def check_workdir(config, mode: str, workdir: str) -> list[str]:
  """The workdir and train.logdir: local ones must be (or can be made) writable
  folders, since every mode writes its log there. What a remote (gs://) workdir
  needs: a local folder for generated data (its logs have a local default,
  run_logs.py); train.logdir, if set, is local."""
  out = []
  if "://" not in workdir:
    out += _folder_problem(workdir, f"workdir {workdir}")
  if config.train.logdir and "://" not in config.train.logdir:
    out += _folder_problem(config.train.logdir, f"train.logdir={config.train.logdir!r}")
  if "://" in config.train.logdir:
    out.append(f"train.logdir={config.train.logdir!r} must be a local folder (the logs of a gs:// "
               f"workdir are copied into it by themselves)")
  if (mode in ("train", "pretrain") and "://" in workdir and config.data.source == "synthetic"
      and not config.data.path):
    out.append(f"workdir {workdir} is remote: data.source='synthetic' needs a local data.path")
  if mode == "eval" and "://" in workdir:  # its tables and masks are written with os calls
    out.append(f"workdir {workdir} is remote: --mode=eval writes its results locally; copy "
               f"{workdir}/export into a local folder's export/ and give that folder as --workdir")
  return out


def check_predict(config, mode: str, workdir: str) -> list[str]:
  """Chunking and frame rate; in predict mode the workdir (local: it exists),
  the input, probed (a readable video stream or a folder of frames of one size),
  and a new or empty output folder that can be made."""
  p = config.predict
  out = [*above(config, "predict.fps", 0.0), *at_least(config, "predict.chunk_frames", 1)]
  t = config.data.num_frames
  if not out and t >= 1 and p.chunk_frames % t:
    out.append(f"predict.chunk_frames={p.chunk_frames} must be a multiple of data.num_frames={t} "
               f"(whole clips per chunk)")
  if mode != "predict":
    return out
  if "://" not in workdir and not os.path.isdir(workdir):
    out.append(f"workdir {workdir} does not exist: --mode=predict reads its trained weights")
  try:
    video_io.open_source(p.input, p.fps)
  except video_io.InputError as e:
    out.append(f"predict.input: {e}")
  problem = predict.output_problem(p.output)
  if problem is None:
    out += _folder_problem(p.output, f"predict.output={p.output!r}")
  else:
    out.append(f"predict.output: {problem}")
  return out


def problems(config: ml_collections.ConfigDict, mode: str, workdir: str) -> list[str]:
  """Every problem of the config for `mode` (train, export, eval, predict), section by section."""
  return [*check_model(config), *check_loss(config), *check_data(config, mode),
          *check_optim(config), *check_train(config), *check_pretrain(config),
          *check_init(config, mode), *check_eval(config, mode),
          *check_predict(config, mode, workdir), *check_workdir(config, mode, workdir)]


def validate(config: ml_collections.ConfigDict, mode: str, workdir: str) -> None:
  """Raise ConfigError listing every problem, one per line."""
  found = problems(config, mode, workdir)
  if found:
    raise ConfigError("\n".join(found))
