"""The train state and how it changes outside the loss: TrainState, AdamW with
its learning-rate schedules, the EMA teacher (eq. 14), and the state created
sharded on the mesh."""

import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from smtc_jax import checkpoint
from smtc_jax import sharding
from smtc_jax.models import smtc

ENCODER = "encoder"  # top-level parameter collection of the encoder
EMA_SCOPES = ("all", "non_encoder")  # train.ema_scope


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


def new_state(params, optimizer, rng, batch_stats=None) -> TrainState:
  """Step 0: student and teacher equal (as the code's load_state_dict)."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                    batch_stats={} if batch_stats is None else batch_stats,
                    opt_state=optimizer.init(params), rng=rng,
                    teacher_centre_fired=jnp.zeros((), jnp.bool_))


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


def learning_rates(config: ml_collections.ConfigDict, step) -> dict[str, jax.Array]:
  """{'lr', 'lr_encoder'}: both schedules at `step`, the step's metrics."""
  return {"lr": learning_rate(config)(step), "lr_encoder": encoder_learning_rate(config)(step)}


def encoder_trained_from(config) -> int | None:
  """The first step that trains the encoder: after optim.grad_iter frozen steps,
  or none (None) while the encoder's lr is zero."""
  return None if config.optim.encoder_lr_mult == 0.0 else config.optim.grad_iter


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
  updated = optax.incremental_update(params, ema_params, step_size=1.0 - momentum)
  if scope == "non_encoder":
    updated = {**updated, ENCODER: ema_params[ENCODER]}
  return updated


def apply_gradients(state: TrainState, grads, optimizer, *, ema_momentum: float,
                    ema_scope: str = "all", **extra_args) -> TrainState:
  """One optimizer update of the student (`extra_args` go to the optimizer's
  update, e.g. freeze_encoder) and one EMA update of the teacher; the step
  advances by one."""
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params, **extra_args)
  params = optax.apply_updates(state.params, updates)
  ema_params = ema_update(state.ema_params, params, ema_momentum, ema_scope)
  return state.replace(step=state.step + 1, params=params, ema_params=ema_params,
                       opt_state=opt_state)


def init_state(config, model, rng, optimizer) -> TrainState:
  """The SMTC model's state at step 0."""
  variables, state_rng = smtc.init_variables(config, model, rng)
  return new_state(variables["params"], optimizer, state_rng, variables.get("batch_stats", {}))


def place_state(init: Callable[[jax.Array], TrainState], rng, mesh):
  """(state, state_sharding) of init(rng) created on device, replicated over
  the mesh: eval_shape, then jit with out_shardings."""
  state_sharding = jax.tree.map(lambda _: sharding.replicated(mesh), jax.eval_shape(init, rng))
  return jax.jit(init, out_shardings=state_sharding)(rng), state_sharding


def create_state(config, model, optimizer, mesh):
  """The sharded SMTC state (initialised from init.checkpoint if set) and its sharding."""
  init = functools.partial(init_state, config, model, optimizer=optimizer)
  state, state_sharding = place_state(init, jax.random.PRNGKey(config.seed), mesh)
  if config.init.checkpoint:
    state = checkpoint.load_init_params(state, config.init.checkpoint, config.init.scope)
  return state, state_sharding


def build(config, mesh):
  """(model, optimizer, state, state_sharding) of a config: the state created
  on the mesh (and initialised from init.checkpoint if set)."""
  model = smtc.build_model(config)
  optimizer = make_optimizer(config)
  state, state_sharding = create_state(config, model, optimizer, mesh)
  return model, optimizer, state, state_sharding
