"""The jitted SMTC train step: the batch in micro-batches, the loss of eq. 13
and its gradient (student and EMA teacher on two views), the update, the
step's metrics, and the step compiled for the mesh."""

import functools

import jax
import jax.numpy as jnp
import optax

from smtc_jax import losses
from smtc_jax import sharding
from smtc_jax.models import smtc
from smtc_jax.training import state as state_lib


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


def loss_and_grads(state: state_lib.TrainState, batch, *, config, model, freeze_encoder: bool,
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
  student_inputs, drop_path = smtc.draw_inputs(model, config, student_rng, b, t)
  teacher_inputs, _ = smtc.draw_inputs(model, config, teacher_rng, b, t)
  views = {"student": (batch["student"], student_inputs),
           "teacher": (batch["teacher"], teacher_inputs)}
  views = split_microbatches(views, microbatches, data_shards)
  views["drop_path"] = jax.random.split(drop_path, microbatches)

  def forward(params, view, drop_path_key=None):
    frames, (noise, partner) = view
    train = drop_path_key is not None
    return smtc.apply_on_frames(
        model, config, params, state.batch_stats, frames, instance_noise=noise,
        partner=partner, train=train,
        rngs={smtc.RNG_DROP_PATH: drop_path_key} if train else None)

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
      params = {**params, state_lib.ENCODER: jax.lax.stop_gradient(params[state_lib.ENCODER])}
    return losses.smtc_loss(forward(params, view, drop_path_key), teacher, config,
                            batch_fraction=1.0 / microbatches, obj_count=obj_count,
                            step=state.step, teacher_statistics=teacher_statistics,
                            centre_fired=state.teacher_centre_fired)

  def micro_step(view):
    teacher = jax.lax.stop_gradient(forward(state.ema_params, view["teacher"]))
    return jax.value_and_grad(loss_fn, has_aux=True)(state.params, view["student"],
                                                     view["drop_path"], teacher)

  return sum_over_microbatches(micro_step, views)


def train_step(state: state_lib.TrainState, batch, *, config, model, optimizer,
               freeze_encoder: bool, microbatches: int = 1, data_shards: int = 1):
  """One step: loss_and_grads (which takes the other arguments), one AdamW
  update (the encoder's AdamW state left untouched while it is frozen), one EMA
  update of the teacher (eq. 14)."""
  (total, terms), grads = loss_and_grads(
      state, batch, config=config, model=model, freeze_encoder=freeze_encoder,
      microbatches=microbatches, data_shards=data_shards)
  t = config.train
  new_state = state_lib.apply_gradients(state, grads, optimizer, ema_momentum=t.ema_momentum,
                                        ema_scope=t.ema_scope, freeze_encoder=freeze_encoder)
  metrics = {
      "loss": total, "loss_sem": terms["sem"], "loss_reg": terms["reg"],
      "loss_obj": terms["obj"], "loss_cycle": terms["cycle"], "valid_fraction": terms["valid"],
      "semantic_top_share": terms["top_share"], "teacher_centred": terms["centred"],
      "grad_norm": optax.global_norm(grads), **state_lib.learning_rates(config, state.step),
  }
  fired = state.teacher_centre_fired | (terms["centred"] > 0)
  return new_state.replace(teacher_centre_fired=fired), metrics


def compile_step(fn, mesh, state_sharding):
  """fn(state, batch) -> (state, metrics) jitted for the mesh: the batch split
  over its data axis, the state as `state_sharding` (donated), the metrics
  replicated."""
  return jax.jit(fn, in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
                 out_shardings=(state_sharding, sharding.replicated(mesh)), donate_argnums=(0,))


def compile_train_steps(config, model, optimizer, mesh, state_sharding):
  """The jitted step, in a frozen-encoder and a trained-encoder version, each
  accumulating over train.microbatch micro-batches: {freeze_encoder: step}."""
  microbatches = microbatches_per_step(config, mesh)

  def jitted(freeze):
    return compile_step(
        functools.partial(train_step, config=config, model=model, optimizer=optimizer,
                          freeze_encoder=freeze, microbatches=microbatches,
                          data_shards=mesh.shape[sharding.DATA_AXIS]),
        mesh, state_sharding)

  return {True: jitted(True), False: jitted(False)}


def step_schedule(config, steps) -> tuple[tuple[int, object], ...]:
  """((first step, jitted step), ...) of compile_train_steps' `steps`: the
  frozen-encoder step from step 0, the trained-encoder one from
  state.encoder_trained_from on (the loop runs the last one begun)."""
  trained_from = state_lib.encoder_trained_from(config)
  return ((0, steps[True]),) + (() if trained_from is None else ((trained_from, steps[False]),))
