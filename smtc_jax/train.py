"""Training: TrainState, the optimizer, the jitted train step with its EMA
teacher (eq. 13-14), and the loop."""

import functools
import json
import os
import time
from typing import Any

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
from smtc_jax import sharding
from smtc_jax.data import pipeline
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


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW with its own schedule for the encoder and for everything else."""
  o = config.optim

  def adamw(schedule):
    return optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                       mask=decay_mask)

  labels = lambda params: {k: (ENCODER if k == ENCODER else "head") for k in params}
  optimizer = optax.multi_transform(
      {ENCODER: adamw(encoder_learning_rate(config)), "head": adamw(learning_rate(config))},
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


def normalize(frames, config: ml_collections.ConfigDict):
  """uint8 (..., 3) frames -> float32 normalised with the data statistics."""
  mean = jnp.asarray(config.data.mean, jnp.float32) * 255.0
  std = jnp.asarray(config.data.std, jnp.float32) * 255.0
  return (frames.astype(jnp.float32) - mean) / std


def model_rngs(rng):
  instance, partner = jax.random.split(rng)
  return {smtc.RNG_INSTANCE: instance, smtc.RNG_PARTNER: partner}


def init_variables(config, model, rng):
  """(variables, rng left for the train state): the model initialised on a
  dummy clip of the configured size. Evaluation's untrained baseline draws its
  weights here too, so it is the trained run's step 0."""
  d = config.data
  clip = jnp.zeros((1, d.num_frames, *d.resolution, 3), jnp.float32)
  params_rng, init_rng, state_rng = jax.random.split(rng, 3)
  return model.init({"params": params_rng, **model_rngs(init_rng)}, clip), state_rng


def init_state(config, model, rng, optimizer) -> TrainState:
  """Student and teacher start equal (as the code's load_state_dict)."""
  variables, state_rng = init_variables(config, model, rng)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=optimizer.init(params), rng=state_rng)


def model_variables(params, batch_stats):
  """The variables model.apply takes: params, and BatchNorm statistics if any."""
  return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def train_step(state: TrainState, batch, *, config, model, optimizer, freeze_encoder: bool):
  """One step: student and teacher forward on two views, eq. 13, AdamW, EMA.

  batch: {'student', 'teacher': (B, T, H, W, 3) uint8}. With `freeze_encoder`
  the student's encoder parameters are constants, so XLA computes no encoder
  backward at all; the update of every other parameter is the same.
  """
  rng = jax.random.fold_in(state.rng, state.step)
  student_rng, teacher_rng = jax.random.split(rng)
  teacher = model.apply(model_variables(state.ema_params, state.batch_stats),
                        normalize(batch["teacher"], config),
                        rngs=model_rngs(teacher_rng))
  teacher = jax.lax.stop_gradient(teacher)
  student_clip = normalize(batch["student"], config)

  def loss_fn(params):
    if freeze_encoder:
      params = {**params, ENCODER: jax.lax.stop_gradient(params[ENCODER])}
    student = model.apply(model_variables(params, state.batch_stats), student_clip,
                          rngs=model_rngs(student_rng))
    return losses.smtc_loss(student, teacher, config)

  (total, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  t = config.train
  ema_params = ema_update(state.ema_params, params, t.ema_momentum, t.ema_scope)
  metrics = {
      "loss": total, "loss_sem": terms["sem"], "loss_reg": terms["reg"],
      "loss_obj": terms["obj"], "valid_fraction": terms["valid"],
      "grad_norm": optax.global_norm(grads),
      "lr": learning_rate(config)(state.step),
      "lr_encoder": encoder_learning_rate(config)(state.step),
  }
  new_state = state.replace(step=state.step + 1, params=params, ema_params=ema_params,
                            opt_state=opt_state)
  return new_state, metrics


def compile_train_steps(config, model, optimizer, mesh, state_sharding):
  """The jitted step, in a frozen-encoder and a trained-encoder version."""
  batch_sharding = sharding.batch_sharding(mesh)
  replicated = sharding.replicated(mesh)

  def jitted(freeze):
    fn = functools.partial(train_step, config=config, model=model, optimizer=optimizer,
                           freeze_encoder=freeze)
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
  """Where process 0 writes TensorBoard, metrics.jsonl and config.json: the
  workdir, or train.logdir (a local folder) when the workdir is remote (gs://),
  where only Orbax writes."""
  if config.train.logdir:
    return config.train.logdir
  if checkpoint.is_remote(workdir):
    raise ValueError(f"workdir {workdir} is remote: set train.logdir to a local folder for logs")
  return workdir


def build(config, mesh):
  """(model, optimizer, state, state_sharding) of a config: the state created
  on the mesh (and initialised from init.checkpoint if set)."""
  model = smtc.build_model(config)
  optimizer = make_optimizer(config)
  state, state_sharding = create_state(config, model, optimizer, mesh)
  return model, optimizer, state, state_sharding


def latest_state(config, workdir: str) -> TrainState:
  """The train state of the workdir's latest checkpoint (for export and eval)."""
  _, _, state, _ = build(config, sharding.make_mesh())
  manager = checkpoint.make_manager(workdir, config)
  if manager.latest_step() is None:
    raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, checkpoint.CHECKPOINT_DIR)}")
  state, _ = checkpoint.restore_latest(manager, state)
  return state


class MetricWriter:
  """TensorBoard scalars and a metrics.jsonl file, from process 0 only."""

  def __init__(self, logdir: str):
    self.enabled = jax.process_index() == 0
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self.tb = SummaryWriter(os.path.join(logdir, "tensorboard"))
      self.jsonl = open(os.path.join(logdir, "metrics.jsonl"), "a")

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    for name, value in scalars.items():
      self.tb.add_scalar(name, value, step)
    self.jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self.jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self.tb.close()
      self.jsonl.close()


def progress_line(step, num_steps, scalars, steps_per_sec) -> str:
  eta = (num_steps - step) / max(steps_per_sec, 1e-9)
  return (f"step {step}/{num_steps} | loss {scalars['loss']:.4f} (sem {scalars['loss_sem']:.4f} "
          f"reg {scalars['loss_reg']:.4f} obj {scalars['loss_obj']:.4f}) | valid "
          f"{scalars['valid_fraction']:.2f} | lr {scalars['lr']:.2e} | {steps_per_sec:.2f} steps/s"
          f" | ETA {eta / 60:.1f} min")


def save_config(config, logdir: str) -> None:
  if jax.process_index() == 0:
    with open(os.path.join(logdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))


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
  logdir = log_dir(config, workdir)
  os.makedirs(logdir, exist_ok=True)
  save_config(config, logdir)
  mesh = sharding.make_mesh()
  sharding.check_batch_divisible(config.data.batch_size, mesh)
  source = pipeline.make_source(config, workdir)
  dataset = pipeline.build_dataset(
      source, pipeline.ClipSpec.from_config(config.data), seed=config.seed,
      global_batch=config.data.batch_size, process_index=jax.process_index(),
      process_count=jax.process_count())
  data_iter = pipeline.make_iterator(dataset, config.data.num_workers, config.data.prefetch)
  model, optimizer, state, state_sharding = build(config, mesh)
  manager = checkpoint.make_manager(workdir, config)
  state, data_iter = checkpoint.restore_latest(manager, state, data_iter, set_aside=True)
  steps = compile_train_steps(config, model, optimizer, mesh, state_sharding)
  writer = MetricWriter(logdir)
  watch = preemption.Watch()
  start, t = int(state.step), config.train
  console.say(f"data: {source}")
  console.say(f"{'resuming at' if start else 'starting at'} step {start} of {t.num_steps} on "
              f"{jax.device_count()} device(s); a progress line every {t.log_every} steps, "
              f"checkpoints every {t.checkpoint_every} in {manager.directory}")
  try:
    scalars = train_loop(config, state, data_iter, steps, mesh, manager, writer, watch)
  finally:
    watch.close()
    manager.wait_until_finished()
    manager.close()
    writer.close()
  console.say(f"done: step {t.num_steps}; checkpoints in {manager.directory}, metrics in "
              f"{os.path.join(logdir, 'metrics.jsonl')} and {os.path.join(logdir, 'tensorboard')}")
  return scalars


def train_loop(config, state, data_iter, steps, mesh, manager, writer, watch) -> dict[str, float]:
  """The steps from the state's to train.num_steps: log, check, checkpoint.
  `steps` maps encoder_frozen -> step function (compile_train_steps); a
  checkpoint step checks the whole state, a log step the metrics, so no
  non-finite state is ever saved and no non-finite loss is logged."""
  t = config.train
  start = int(state.step)
  last_saved = start or None  # a resumed state is its checkpoint's
  scalars, tick, tick_step = {}, time.time(), start
  for step in range(start, t.num_steps):
    batch = sharding.global_batch(next(data_iter), mesh)
    state, metrics = steps[encoder_frozen(config, step)](state, batch)
    done = step + 1
    preempted = watch.reached(done) and done < t.num_steps  # reached() runs every step
    log_now = done % t.log_every == 0 or done == t.num_steps
    save_now = done % t.checkpoint_every == 0 or done == t.num_steps or preempted
    if log_now or save_now:
      scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
      check_finite(done, scalars, state if save_now else None, last_saved, manager.directory)
    if log_now:
      rate = (done - tick_step) / (time.time() - tick)
      scalars["steps_per_sec"] = rate
      tick, tick_step = time.time(), done
      writer.write(done, scalars)
      console.say(progress_line(done, t.num_steps, scalars, rate))
    if save_now:
      checkpoint.save(manager, done, state, data_iter)
      last_saved = done
    if preempted:
      manager.wait_until_finished()
      raise preemption.Preempted(f"preempted (SIGTERM) at step {done}: saved "
                                 f"{manager.directory}/{done}; the same command resumes from it")
  return scalars
