"""Training: TrainState, the optimizer, the jitted train step with its EMA
teacher (eq. 13-14), and the loop."""

import functools
import json
import os
import time
from typing import Any

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from smtc_jax import checkpoint
from smtc_jax import losses
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
                    opt_state=optimizer.init(params), rng=state_rng)


def train_step(state: TrainState, batch, *, config, model, optimizer, freeze_encoder: bool):
  """One step: student (in training mode) and teacher (deterministic) forward on
  two views, eq. 13, AdamW, EMA.

  batch: {'student', 'teacher': (B, T, H, W, 3) uint8}. With `freeze_encoder`
  the student's encoder parameters are constants, so XLA computes no encoder
  backward at all, and the encoder's AdamW state is left untouched; the update
  of every other parameter is the same.
  """
  rng = jax.random.fold_in(state.rng, state.step)
  student_rng, teacher_rng = jax.random.split(rng)
  teacher = model.apply(smtc.model_variables(state.ema_params, state.batch_stats),
                        smtc.normalize(batch["teacher"], config),
                        rngs=smtc.model_rngs(teacher_rng))
  teacher = jax.lax.stop_gradient(teacher)
  student_clip = smtc.normalize(batch["student"], config)

  def loss_fn(params):
    if freeze_encoder:
      params = {**params, ENCODER: jax.lax.stop_gradient(params[ENCODER])}
    student = model.apply(smtc.model_variables(params, state.batch_stats), student_clip,
                          train=True, rngs=smtc.model_rngs(student_rng))
    return losses.smtc_loss(student, teacher, config)

  (total, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params,
                                        freeze_encoder=freeze_encoder)
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Train (resuming from the workdir's latest checkpoint); returns the last metrics."""
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
  state, data_iter = checkpoint.restore_latest(manager, state, data_iter)
  start = int(state.step)
  steps = compile_train_steps(config, model, optimizer, mesh, state_sharding)
  writer = MetricWriter(logdir)
  t = config.train
  logging.info("training %d videos from step %d to %d on %d devices", len(source), start,
               t.num_steps, jax.device_count())
  scalars, tick, tick_step = {}, time.time(), start
  for step in range(start, t.num_steps):
    batch = sharding.global_batch(next(data_iter), mesh)
    state, metrics = steps[encoder_frozen(config, step)](state, batch)
    done = step + 1
    if done % t.log_every == 0 or done == t.num_steps:
      scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
      if not np.isfinite(scalars["loss"]):
        raise FloatingPointError(f"non-finite loss at step {done}: {scalars}")
      rate = (done - tick_step) / (time.time() - tick)
      scalars["steps_per_sec"] = rate
      tick, tick_step = time.time(), done
      writer.write(done, scalars)
      if jax.process_index() == 0:
        print(progress_line(done, t.num_steps, scalars, rate), flush=True)
    checkpoint.save(manager, done, state, data_iter, every=t.checkpoint_every,
                    force=done == t.num_steps)
  manager.wait_until_finished()
  manager.close()
  writer.close()
  return scalars
