"""Training: TrainState, the optimizer, the jitted train step with its EMA
teacher (eq. 13-14), and the loop."""

import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from smtc_jax import checkpoint
from smtc_jax import console
from smtc_jax import losses
from smtc_jax import preemption
from smtc_jax import run_config
from smtc_jax import run_logs
from smtc_jax import sharding
from smtc_jax.data import pipeline
from smtc_jax.evaluation import monitor
from smtc_jax.models import smtc

ENCODER = "encoder"  # top-level parameter collection of the encoder


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any  # the student
  ema_params: Any  # the EMA teacher (eq. 14)
  batch_stats: Any  # frozen BatchNorm statistics (ResNet encoder; {} for the ViT)
  opt_state: Any
  rng: jax.Array
  # The latched gate of the teacher's centring opened on an earlier step
  # (loss.teacher_centre_gate): kept so a resumed run decides the same.
  teacher_centre_fired: jax.Array


def learning_rate(config: ml_collections.ConfigDict):
  """Linear warm-up, then cosine from lr to final_lr_ratio * lr over the run."""
  o = config.optim
  cosine = optax.cosine_decay_schedule(
      o.learning_rate, max(1, config.train.num_steps - o.warmup_steps), alpha=o.final_lr_ratio)
  if not o.warmup_steps:
    return cosine
  warmup = optax.linear_schedule(0.0, o.learning_rate, o.warmup_steps)
  return optax.join_schedules([warmup, cosine], [o.warmup_steps])


def encoder_learning_rate(config: ml_collections.ConfigDict):
  """lr * encoder_lr_mult, and 0 for the first grad_iter steps."""
  base = learning_rate(config)
  o = config.optim
  return lambda step: jnp.where(step < o.grad_iter, 0.0, o.encoder_lr_mult) * base(step)


def decay_mask(params):
  """Weight decay on matrices only: not on biases and 1-D parameters."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def freezable(moments: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """`moments` that, updated with freeze_encoder=True, return zero updates and
  keep their state (Adam's mu, nu and step count) as it was: the first update
  after a freeze is then a fresh AdamW's, not one bias-corrected for steps that
  never fed it a gradient."""

  def update(updates, state, params=None, *, freeze_encoder: bool = False, **extra_args):
    del extra_args
    if freeze_encoder:
      return jax.tree.map(jnp.zeros_like, updates), state
    return moments.update(updates, state, params)

  return optax.GradientTransformationExtraArgs(moments.init, update)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformationExtraArgs:
  """AdamW with its own schedule for the encoder and for everything else. While
  the encoder is frozen (`update(..., freeze_encoder=True)`) its Adam state
  stands still; its schedule, like every other, follows the global step."""
  o = config.optim

  def adamw(schedule, moments):  # optax.adamw's chain, with the moments given
    return optax.chain(moments, optax.add_decayed_weights(o.weight_decay, decay_mask),
                       optax.scale_by_learning_rate(schedule))

  moments = lambda: optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps)
  labels = lambda params: {k: (ENCODER if k == ENCODER else "head") for k in params}
  optimizer = optax.multi_transform(
      {ENCODER: adamw(encoder_learning_rate(config), freezable(moments())),
       "head": adamw(learning_rate(config), moments())},
      labels)
  if o.grad_clip_norm:
    optimizer = optax.chain(optax.clip_by_global_norm(o.grad_clip_norm), optimizer)
  return optimizer


def ema_update(ema_params, params, momentum: float, scope: str):
  """teacher <- m * teacher + (1 - m) * student (eq. 14) over `scope`: all
  parameters (paper) or all but the encoder (code: the teacher's encoder stays
  at its initial weights)."""
  if scope not in ("all", "non_encoder"):
    raise ValueError(f"train.ema_scope must be 'all' or 'non_encoder', got {scope!r}")
  updated = optax.incremental_update(params, ema_params, step_size=1.0 - momentum)
  if scope == "non_encoder":
    updated = {**updated, ENCODER: ema_params[ENCODER]}
  return updated


def init_state(config, model, rng, optimizer) -> TrainState:
  """Student and teacher start equal (as the code's load_state_dict)."""
  variables, state_rng = smtc.init_variables(config, model, rng)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=optimizer.init(params), rng=state_rng,
                    teacher_centre_fired=jnp.zeros((), jnp.bool_))


def microbatches_per_step(config, mesh) -> int:
  """How many micro-batches a step scans: each device's share of
  data.batch_size in micro-batches of train.microbatch clips, or 1 when that
  is 0 or at least the share. A size that does not divide the share is a
  ValueError naming the field."""
  devices = mesh.shape[sharding.DATA_AXIS]
  per_device = config.data.batch_size // devices
  size = config.train.microbatch
  if size < 0 or (0 < size < per_device and per_device % size):
    raise ValueError(f"train.microbatch={size} must be 0 or divide the {per_device} clips per "
                     f"device (data.batch_size={config.data.batch_size} over {devices} devices)")
  return per_device // size if 0 < size < per_device else 1


def split_microbatches(tree, num: int, data_shards: int):
  """Leaves (B, ...) -> (num, B / num, ...). Micro-batch a holds the a-th
  slice of every device's contiguous share of the batch (data_shards devices),
  so each device scans its own clips and no clip moves between devices."""
  def split(x):
    x = x.reshape(data_shards, num, -1, *x.shape[1:])  # (devices, num, clips, ...)
    return jnp.swapaxes(x, 0, 1).reshape(num, -1, *x.shape[3:])

  return jax.tree.map(split, tree)


def sum_over_microbatches(fn, microbatches):
  """The sum over a of fn(micro-batch a), pytrees of arrays, in a scan over the
  leading axis: the compiled step holds one micro-batch's activations at a
  time. A single micro-batch runs without a loop."""
  first = jax.tree.map(lambda x: x[0], microbatches)
  if jax.tree.leaves(microbatches)[0].shape[0] == 1:
    return fn(first)
  zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(fn, first))
  add = lambda total, batch: (jax.tree.map(jnp.add, total, fn(batch)), None)
  return jax.lax.scan(add, zeros, microbatches)[0]


def loss_and_grads(state: TrainState, batch, *, config, model, freeze_encoder: bool,
                   microbatches: int = 1, data_shards: int = 1):
  """((total, terms), grads) of eq. 13 on the batch: student (in training mode)
  and teacher (deterministic) forward on two views, the student's gradient.

  batch: {'student', 'teacher': (B, T, H, W, 3) uint8}. With `freeze_encoder`
  the student's encoder parameters are constants, so XLA computes no encoder
  backward at all; the gradient of every other parameter is the same.

  With `microbatches` A > 1 (microbatches_per_step; `data_shards`: the devices
  of the mesh's data axis) the batch is scanned in A micro-batches and their
  losses and gradients summed: the same loss, terms and gradient as the whole
  batch at once. The model's random draws are made for the whole batch and
  split with it; the micro-batch losses are contributions to the whole
  batch's (losses.smtc_loss), and L_obj's count of valid student instances,
  needed before any gradient, comes from a first scan of student forward
  passes: accumulation's one extra cost (in the steps the teacher may be centred,
  loss.teacher_centre_steps, its mean logits and masks over the whole batch come
  from a first scan of teacher forward passes too). Stochastic depth draws its own key
  per micro-batch.
  """
  # batch leaves: (B, T, H, W, 3); after the split, views leaves: (A, B / A, ...).
  rng = jax.random.fold_in(state.rng, state.step)
  student_rng, teacher_rng = jax.random.split(rng)
  b, t = batch["student"].shape[:2]
  draw = lambda r: model.apply({}, b, t, smtc.feature_dim(config), rngs=smtc.model_rngs(r),
                               method=smtc.SMTC.random_inputs)
  views = {"student": (batch["student"], draw(student_rng)),
           "teacher": (batch["teacher"], draw(teacher_rng))}
  views = split_microbatches(views, microbatches, data_shards)
  drop_path = smtc.model_rngs(student_rng)[smtc.RNG_DROP_PATH]
  views["drop_path"] = jax.random.split(drop_path, microbatches)

  def forward(params, view, drop_path_key=None):
    frames, (noise, partner) = view
    train = drop_path_key is not None
    return model.apply(smtc.model_variables(params, state.batch_stats),
                       smtc.normalize(frames, config), instance_noise=noise, partner=partner,
                       train=train, rngs={smtc.RNG_DROP_PATH: drop_path_key} if train else None)

  obj_count = None
  if microbatches > 1 and config.loss.obj_weight:
    obj_count = sum_over_microbatches(
        lambda v: losses.valid_student_count(
            forward(state.params, v["student"], v["drop_path"]), config), views)

  teacher_statistics = None
  if microbatches > 1 and config.loss.sem_weight and config.loss.teacher_centre_steps:
    def whole_batch_statistics():
      return sum_over_microbatches(
          lambda v: jax.tree.map(lambda x: x / microbatches, losses.semantic_statistics(
              forward(state.ema_params, v["teacher"]))), views)

    def unused():  # past the centred steps: no teacher scan
      return (jnp.zeros((config.model.num_semantics,), jnp.float32),) * 2

    teacher_statistics = jax.lax.cond(state.step < config.loss.teacher_centre_steps,
                                      whole_batch_statistics, unused)

  def loss_fn(params, view, drop_path_key, teacher):
    if freeze_encoder:
      params = {**params, ENCODER: jax.lax.stop_gradient(params[ENCODER])}
    return losses.smtc_loss(forward(params, view, drop_path_key), teacher, config,
                            batch_fraction=1.0 / microbatches, obj_count=obj_count,
                            step=state.step, teacher_statistics=teacher_statistics,
                            centre_fired=state.teacher_centre_fired)

  def micro_step(view):
    teacher = jax.lax.stop_gradient(forward(state.ema_params, view["teacher"]))
    return jax.value_and_grad(loss_fn, has_aux=True)(state.params, view["student"],
                                                     view["drop_path"], teacher)

  return sum_over_microbatches(micro_step, views)


def train_step(state: TrainState, batch, *, config, model, optimizer, freeze_encoder: bool,
               microbatches: int = 1, data_shards: int = 1):
  """One step: loss_and_grads (which takes the other arguments), one AdamW
  update (the encoder's AdamW state left untouched while it is frozen), one EMA
  update of the teacher (eq. 14)."""
  (total, terms), grads = loss_and_grads(
      state, batch, config=config, model=model, freeze_encoder=freeze_encoder,
      microbatches=microbatches, data_shards=data_shards)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params,
                                        freeze_encoder=freeze_encoder)
  params = optax.apply_updates(state.params, updates)
  t = config.train
  ema_params = ema_update(state.ema_params, params, t.ema_momentum, t.ema_scope)
  metrics = {
      "loss": total, "loss_sem": terms["sem"], "loss_reg": terms["reg"],
      "loss_obj": terms["obj"], "loss_cycle": terms["cycle"], "valid_fraction": terms["valid"],
      "semantic_top_share": terms["top_share"], "teacher_centred": terms["centred"],
      "grad_norm": optax.global_norm(grads),
      "lr": learning_rate(config)(state.step),
      "lr_encoder": encoder_learning_rate(config)(state.step),
  }
  new_state = state.replace(step=state.step + 1, params=params, ema_params=ema_params,
                            opt_state=opt_state,
                            teacher_centre_fired=state.teacher_centre_fired | (terms["centred"] > 0))
  return new_state, metrics


def compile_train_steps(config, model, optimizer, mesh, state_sharding):
  """The jitted step, in a frozen-encoder and a trained-encoder version, each
  accumulating over train.microbatch micro-batches."""
  batch_sharding = sharding.batch_sharding(mesh)
  replicated = sharding.replicated(mesh)
  microbatches = microbatches_per_step(config, mesh)

  def jitted(freeze):
    fn = functools.partial(train_step, config=config, model=model, optimizer=optimizer,
                           freeze_encoder=freeze, microbatches=microbatches,
                           data_shards=mesh.shape[sharding.DATA_AXIS])
    return jax.jit(fn, in_shardings=(state_sharding, batch_sharding),
                   out_shardings=(state_sharding, replicated), donate_argnums=(0,))

  return {True: jitted(True), False: jitted(False)}


def encoder_frozen(config, step: int) -> bool:
  """Frozen while grad_iter lasts or whenever the encoder's lr is zero."""
  return step < config.optim.grad_iter or config.optim.encoder_lr_mult == 0.0


def create_state(config, model, optimizer, mesh):
  """Sharded TrainState created on device: eval_shape, then jit with out_shardings."""
  rng = jax.random.PRNGKey(config.seed)
  init = functools.partial(init_state, config, model, optimizer=optimizer)
  abstract = jax.eval_shape(init, rng)
  state_sharding = jax.tree.map(lambda _: sharding.replicated(mesh), abstract)
  state = jax.jit(init, out_shardings=state_sharding)(rng)
  if config.init.checkpoint:
    state = checkpoint.load_init_params(state, config.init.checkpoint, config.init.scope)
  return state, state_sharding


def log_dir(config, workdir: str) -> str:
  """The local folder where process 0 writes TensorBoard, metrics.jsonl and
  config.json: train.logdir, else the workdir, or for a gs:// workdir a local
  folder whose logs are copied into it (run_logs.py)."""
  return run_logs.local_dir(config, workdir)


def build(config, mesh):
  """(model, optimizer, state, state_sharding) of a config: the state created
  on the mesh (and initialised from init.checkpoint if set)."""
  model = smtc.build_model(config)
  optimizer = make_optimizer(config)
  state, state_sharding = create_state(config, model, optimizer, mesh)
  return model, optimizer, state, state_sharding


class MetricWriter:
  """TensorBoard scalars and a metrics.jsonl file, from process 0 only; names
  get `prefix` (e.g. 'pretrain/' for the encoder pretraining stage). With a
  `mirror` (run_logs.Mirror of a gs:// workdir) they are copied into the
  workdir as they grow and at close."""

  def __init__(self, logdir: str, prefix: str = "", mirror: run_logs.Mirror | None = None):
    self.enabled = jax.process_index() == 0
    self.prefix = prefix
    self.mirror = mirror
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self.tb = SummaryWriter(os.path.join(logdir, "tensorboard"))
      self.jsonl = open(os.path.join(logdir, "metrics.jsonl"), "a")

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    scalars = {self.prefix + name: value for name, value in scalars.items()}
    for name, value in scalars.items():
      self.tb.add_scalar(name, value, step)
    self.jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self.jsonl.flush()
    if self.mirror:
      self.tb.flush()  # the event file complete on disk before it is copied
      self.mirror.push()

  def image(self, step: int, name: str, image: np.ndarray) -> None:
    """An (H, W, 3) uint8 image in TensorBoard."""
    if self.enabled:
      self.tb.add_image(self.prefix + name, image, step, dataformats="HWC")

  def close(self) -> None:
    if self.enabled:
      self.tb.close()
      self.jsonl.close()
      if self.mirror:
        self.mirror.push(force=True)


def progress_line(step, scalars, steps_per_sec, *, num_steps) -> str:
  """One console line of the last step's metrics; 'teacher centred' while the
  warm-up's guard against a collapsed start is on (loss.teacher_centre_steps)."""
  eta = (num_steps - step) / max(steps_per_sec, 1e-9)
  cycle = f" cycle {scalars['loss_cycle']:.4f}" if scalars.get("loss_cycle") else ""
  centred = " (teacher centred)" if scalars.get("teacher_centred") else ""
  return (f"step {step}/{num_steps} | loss {scalars['loss']:.4f} (sem {scalars['loss_sem']:.4f} "
          f"reg {scalars['loss_reg']:.4f} obj {scalars['loss_obj']:.4f}{cycle}) | valid "
          f"{scalars['valid_fraction']:.2f} | top semantic {scalars['semantic_top_share']:.2f}"
          f"{centred} | "
          f"lr {scalars['lr']:.2e} | {steps_per_sec:.2f} steps/s | ETA {eta / 60:.1f} min")


def save_config(config, logdir: str) -> str | None:
  """Process 0 writes the config into `logdir` as config.json, or config.<n>.json
  beside the earlier runs' (run_config.save); returns that file."""
  if jax.process_index() == 0:
    return run_config.save(config, logdir)
  return None


def check_resume(config, directory: str, compared=None, resumable=run_config.RESUMABLE) -> None:
  """Refuse a resume from `directory`'s checkpoints under another config
  (run_config.ConfigMismatch; `compared` and `resumable` as checkpoint.check_resume);
  a console line names the fields that may change and did."""
  changes = checkpoint.check_resume(directory, config, compared, resumable)
  if changes:
    console.say(f"resuming {directory} with changed {'; '.join(changes)}")


@jax.jit
def all_finite(tree) -> jax.Array:
  """True if every float in `tree` (a whole TrainState) is finite."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves))


def check_finite(step: int, scalars: dict[str, float], state, last_saved: int | None,
                 directory) -> None:
  """Stop before a non-finite loss is logged or a non-finite state is saved;
  `state` is None on steps that log without saving."""
  bad = [f"{k} {v}" for k, v in scalars.items() if not np.isfinite(v)]
  if state is not None and not bool(all_finite(state)):
    bad.append("parameters or optimizer state")
  if not bad:
    return
  last = (f"the last good checkpoint is step {last_saved} ({directory}/{last_saved})"
          if last_saved is not None else f"there is no checkpoint in {directory} yet")
  raise FloatingPointError(f"non-finite values at step {step} ({', '.join(bad)}): not "
                           f"checkpointed; {last}")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Train (resuming from the workdir's newest readable checkpoint); returns the
  last metrics. At a preemption notice (SIGTERM) it saves the current step and
  raises preemption.Preempted."""
  mesh = sharding.make_mesh()
  sharding.check_batch_divisible(config.data.batch_size, mesh)
  microbatches = microbatches_per_step(config, mesh)  # a bad size fails before anything is built
  # The config is checked against the checkpoints' before a file is written.
  check_resume(config, os.path.join(workdir, checkpoint.CHECKPOINT_DIR))
  logdir = log_dir(config, workdir)
  os.makedirs(logdir, exist_ok=True)
  save_config(config, logdir)
  source = pipeline.make_source(config, workdir)
  data_iter = pipeline.training_iterator(config, source, process_index=jax.process_index(),
                                         process_count=jax.process_count())
  console.say(f"data: {source}")
  watching, watch_line = monitor.watch_plan(config)
  console.say(watch_line)  # before the model compiles: what the figures will be of
  discovery_monitor = (monitor.TrainingMonitor(config, workdir)
                       if watching and jax.process_index() == 0 else None)
  model, optimizer, state, state_sharding = build(config, mesh)
  manager = checkpoint.make_manager(workdir, config)
  state, data_iter = checkpoint.restore_latest(manager, state, data_iter, set_aside=True)
  steps = compile_train_steps(config, model, optimizer, mesh, state_sharding)
  mirror = run_logs.mirror_for(config, workdir)
  writer = MetricWriter(logdir, mirror=mirror)
  start, t = int(state.step), config.train
  console.say(f"{'resuming at' if start else 'starting at'} step {start} of {t.num_steps} on "
              f"{jax.device_count()} device(s) ({microbatches} micro-batch(es) a step); a progress "
              f"line every {t.log_every} steps, "
              f"checkpoints every {t.checkpoint_every} in {manager.directory}")
  stage = Stage(t.num_steps, lambda step: steps[encoder_frozen(config, step)],
                functools.partial(progress_line, num_steps=t.num_steps))
  _, scalars = run_loop(config, stage, state, data_iter, mesh, manager, writer,
                        discovery_monitor)
  metrics_dir = workdir if mirror else logdir
  console.say(f"done: step {t.num_steps}; checkpoints in {manager.directory}, metrics in "
              f"{metrics_dir}/{run_logs.METRICS} and {metrics_dir}/{run_logs.TENSORBOARD}")
  return scalars


@dataclasses.dataclass(frozen=True)
class Stage:
  """What the loop runs: `num_steps` steps, `step_fn(step)` the jitted step for
  a step index, `progress(done, scalars, steps_per_sec)` its console line."""
  num_steps: int
  step_fn: Callable[[int], Callable]
  progress: Callable[..., str]


def run_loop(config, stage: Stage, state, data_iter, mesh, manager, writer,
             discovery_monitor=None):
  """train_loop under a preemption watch; closes the checkpoint manager (after
  its last write) and the writer, however the loop ends."""
  watch = preemption.Watch()
  try:
    return train_loop(config, stage, state, data_iter, mesh, manager, writer, watch,
                      discovery_monitor)
  finally:
    watch.close()
    checkpoint.close(manager)
    writer.close()


def train_loop(config, stage: Stage, state, data_iter, mesh, manager, writer, watch,
               discovery_monitor=None):
  """(final state, last logged metrics) of the steps from the state's to
  stage.num_steps: log, check, evaluate,
  checkpoint (every train.log_every, train.checkpoint_every and train.eval_every
  steps, and at the end). A checkpoint step checks the whole state, a log step
  the metrics, so no non-finite state is ever saved and no non-finite loss is
  logged. With a `discovery_monitor` (monitor.TrainingMonitor) its figures and
  overlay go to TensorBoard and the console."""
  t, last = config.train, stage.num_steps
  start = int(state.step)
  last_saved = start or None  # a resumed state is its checkpoint's
  scalars, tick, tick_step = {}, time.time(), start
  for step in range(start, last):
    batch = sharding.global_batch(next(data_iter), mesh)
    state, metrics = stage.step_fn(step)(state, batch)
    done = step + 1
    preempted = watch.reached(done) and done < last  # reached() runs every step
    log_now = done % t.log_every == 0 or done == last
    save_now = done % t.checkpoint_every == 0 or done == last or preempted
    if log_now or save_now:
      scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
      check_finite(done, scalars, state if save_now else None, last_saved, manager.directory)
    if log_now:
      rate = (done - tick_step) / (time.time() - tick)
      scalars["steps_per_sec"] = rate
      tick, tick_step = time.time(), done
      writer.write(done, scalars)
      console.say(stage.progress(done, scalars, rate))
    if discovery_monitor and (done % t.eval_every == 0 or done == last):
      figures, strip = discovery_monitor(state)
      writer.write(done, figures)
      writer.image(done, "eval/overlay", strip)
      console.say(f"eval at step {done} ({discovery_monitor.describe()}) | " +
                  " | ".join(f"{k[len('eval/'):]} {v:.3f}" for k, v in figures.items()))
    if save_now:
      checkpoint.save(manager, done, state, data_iter, config)
      last_saved = done
    if preempted:
      manager.wait_until_finished()
      raise preemption.Preempted(f"preempted (SIGTERM) at step {done}: saved "
                                 f"{manager.directory}/{done}; the same command resumes from it")
  return state, scalars
