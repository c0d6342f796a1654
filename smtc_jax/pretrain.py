"""Self-supervised encoder pretraining for runs without a DINO checkpoint.

SMTC organises features that already separate things (paper Sec. 4.2 starts
from DINO). Where no such checkpoint exists, this stage makes one on the
training frames themselves: dense self-distillation in DINO's teacher-student
form. Two views of a frame (own random resized crop, flip and colour draw) go
through a student ViT and its EMA teacher; every student token predicts, over K
learned prototypes, the teacher's assignment at the same point of the frame in
the other view. The teacher's assignments are balanced over the prototypes by
Sinkhorn-Knopp (as SwAV and DINOv2 centre their teachers), so no centring state
is needed. Because the crops differ, a token's position in its view says
nothing about its content's position in the other view: the features must
describe content.

The result is an Orbax params checkpoint (`WORKDIR/pretrain/export`) with the
encoder under `params/encoder`, which the SMTC stage loads like a converted
DINO checkpoint (`init.scope='encoder'`).
"""

import dataclasses
import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from smtc_jax import checkpoint
from smtc_jax import console
from smtc_jax import losses
from smtc_jax import sharding
from smtc_jax import train
from smtc_jax.data import pipeline
from smtc_jax.models import smtc

PRETRAIN_DIR = "pretrain"


class PrototypeHead(nn.Module):
  """DINO's projection head on every token: MLP -> L2-normalised bottleneck ->
  cosine scores against K L2-normalised prototypes. (..., D) -> (..., K)."""
  hidden: int
  bottleneck: int
  num_prototypes: int

  @nn.compact
  def __call__(self, x):
    x = nn.gelu(nn.Dense(self.hidden, name="fc1")(x))
    x = nn.gelu(nn.Dense(self.hidden, name="fc2")(x))
    x = losses.l2_normalize(nn.Dense(self.bottleneck, name="fc3")(x))
    prototypes = self.param("prototypes", nn.initializers.lecun_normal(),
                            (self.bottleneck, self.num_prototypes))
    return x @ losses.l2_normalize(prototypes, axis=0)


class DenseDistiller(nn.Module):
  """Encoder + prototype head: images (B, H, W, 3) -> scores (B, h, w, K).
  The encoder's parameters sit under 'encoder', as in `smtc.SMTC`."""
  encoder: nn.Module
  head: PrototypeHead

  def __call__(self, images):
    return self.head(self.encoder(images)["tokens"])


def build_model(config: ml_collections.ConfigDict) -> DenseDistiller:
  p = config.pretrain
  return DenseDistiller(encoder=smtc.build_encoder(config),
                        head=PrototypeHead(p.head_hidden, p.head_bottleneck, p.num_prototypes))


def token_centres(h: int, w: int) -> np.ndarray:
  """(h*w, 2) centres (y, x) of a view's token cells, as fractions of the view."""
  ys, xs = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
  return np.stack([ys.ravel(), xs.ravel()], -1).astype(np.float32)


def corresponding_points(points, box_from, box_to):
  """Where points of one view lie in another view of the same frame.

  points: (L, 2) (y, x) fractions of the `from` view; boxes: (5,) (top, left,
  height, width, flipped) of each view's crop as fractions of the frame.
  Returns (L, 2) fractions of the `to` view and (L,) whether they fall inside it.
  """
  y, x = points[:, 0], points[:, 1]
  x = jnp.where(box_from[4] > 0.5, 1.0 - x, x)
  frame_y, frame_x = box_from[0] + y * box_from[2], box_from[1] + x * box_from[3]
  to_y, to_x = (frame_y - box_to[0]) / box_to[2], (frame_x - box_to[1]) / box_to[3]
  to_x = jnp.where(box_to[4] > 0.5, 1.0 - to_x, to_x)
  inside = (to_y >= 0) & (to_y < 1) & (to_x >= 0) & (to_x < 1)
  return jnp.stack([to_y, to_x], -1), inside


def bilinear_sample(maps, points):
  """Values of (h, w, K) maps at (L, 2) (y, x) view fractions: (L, K), bilinear
  between cell centres, clamped at the border."""
  h, w, _ = maps.shape
  y = jnp.clip(points[:, 0] * h - 0.5, 0.0, h - 1.0)
  x = jnp.clip(points[:, 1] * w - 0.5, 0.0, w - 1.0)
  y0, x0 = jnp.floor(y).astype(jnp.int32), jnp.floor(x).astype(jnp.int32)
  y1, x1 = jnp.minimum(y0 + 1, h - 1), jnp.minimum(x0 + 1, w - 1)
  wy, wx = (y - y0)[:, None], (x - x0)[:, None]
  top = maps[y0, x0] * (1 - wx) + maps[y0, x1] * wx
  bottom = maps[y1, x0] * (1 - wx) + maps[y1, x1] * wx
  return top * (1 - wy) + bottom * wy


def balanced_assignments(scores, *, epsilon: float, num_iters: int):
  """Teacher targets (n, K): soft assignments of n tokens to K prototypes with
  equal total mass per prototype (Sinkhorn-Knopp on cost -scores), each row a
  distribution."""
  n, k = scores.shape
  plan = losses.sinkhorn_plan(-scores, jnp.full((n,), 1.0 / n), jnp.full((k,), 1.0 / k),
                              epsilon=epsilon, num_iters=num_iters)
  return plan / jnp.maximum(plan.sum(-1, keepdims=True), 1e-30)


def dense_distillation_loss(student, teacher, boxes, *, temperature: float, epsilon: float,
                            num_iters: int):
  """Cross entropy of student tokens against the teacher's balanced assignment
  at the same frame point in the other view, both directions, over the pairs
  that fall inside both views.

  student, teacher: (B, 2, h, w, K) prototype scores; boxes: (B, 2, 5).
  Returns (loss, metrics).
  """
  b, _, h, w, k = teacher.shape
  targets = jax.vmap(lambda s: balanced_assignments(
      s.reshape(-1, k), epsilon=epsilon, num_iters=num_iters).reshape(b, h, w, k),
                     in_axes=1, out_axes=1)(jax.lax.stop_gradient(teacher))  # (B, 2, h, w, K)
  centres = jnp.asarray(token_centres(h, w))
  total, count, agree = 0.0, 0.0, 0.0
  for src, dst in ((0, 1), (1, 0)):
    points, inside = jax.vmap(corresponding_points, in_axes=(None, 0, 0))(
        centres, boxes[:, src], boxes[:, dst])  # (B, L, 2), (B, L)
    target = jax.vmap(bilinear_sample)(targets[:, dst], points)  # (B, L, K)
    log_student = jax.nn.log_softmax(student[:, src].reshape(b, h * w, k) / temperature, -1)
    weight = inside.astype(jnp.float32)
    total += jnp.sum(weight * -jnp.sum(target * log_student, -1))
    agree += jnp.sum(weight * (jnp.argmax(target, -1) == jnp.argmax(log_student, -1)))
    count += jnp.sum(weight)
  count = jnp.maximum(count, 1.0)
  used = jnp.mean(jnp.any(jax.nn.one_hot(jnp.argmax(targets, -1), k) > 0, axis=(0, 1, 2, 3)))
  return total / count, {"agreement": agree / count, "prototypes_used": used,
                         "overlap": count / (2 * b * h * w)}


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW with linear warm-up and cosine decay; no decay on 1-D parameters."""
  p = config.pretrain
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, p.learning_rate, p.warmup_steps, max(p.num_steps, p.warmup_steps + 1),
      end_value=p.learning_rate * config.optim.final_lr_ratio)
  return optax.chain(optax.clip_by_global_norm(p.grad_clip_norm),
                     optax.adamw(schedule, weight_decay=p.weight_decay, mask=train.decay_mask))


def init_state(config, model, optimizer, rng) -> train.TrainState:
  """Student and teacher start equal, from one dummy image."""
  params_rng, state_rng = jax.random.split(rng)
  image = jnp.zeros((1, *config.pretrain.resolution, 3), jnp.float32)
  params = model.init(params_rng, image)["params"]
  return train.TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                          batch_stats={}, opt_state=optimizer.init(params), rng=state_rng)


def pretrain_step(state: train.TrainState, batch, *, config, model, optimizer):
  """One step: student and teacher on both views, the dense loss, AdamW, EMA.
  batch: {'views': (B, 2, H, W, 3) uint8, 'boxes': (B, 2, 5)}."""
  p = config.pretrain
  b = batch["views"].shape[0]
  images = smtc.normalize(batch["views"].reshape(-1, *batch["views"].shape[2:]), config)
  unflatten = lambda x: x.reshape(b, 2, *x.shape[1:])
  teacher = unflatten(model.apply({"params": state.ema_params}, images))

  def loss_fn(params):
    student = unflatten(model.apply({"params": params}, images))
    return dense_distillation_loss(student, teacher, batch["boxes"], temperature=p.temperature,
                                   epsilon=p.sinkhorn_epsilon, num_iters=p.sinkhorn_iters)

  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema_params = train.ema_update(state.ema_params, params, p.ema_momentum, "all")
  metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), **metrics}
  return state.replace(step=state.step + 1, params=params, ema_params=ema_params,
                       opt_state=opt_state), metrics



def view_spec(config: ml_collections.ConfigDict) -> pipeline.ClipSpec:
  """The clip spec of the training data at the pretraining view size and crop
  range."""
  p = config.pretrain
  return dataclasses.replace(pipeline.ClipSpec.from_config(config.data),
                             resolution=tuple(p.resolution), crop_scale=tuple(p.crop_scale))


def export_dir(workdir: str) -> str:
  return os.path.join(workdir, PRETRAIN_DIR, checkpoint.EXPORT_DIR)


def run(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Pretrain the encoder (resuming from WORKDIR/pretrain's checkpoints) and
  export the teacher; returns the export's folder. A finished export is reused."""
  out = export_dir(workdir)
  if os.path.isdir(out):
    console.say(f"pretrained encoder: {out} (already made)")
    return out
  p = config.pretrain
  stage_dir = os.path.join(workdir, PRETRAIN_DIR)
  logdir = train.log_dir(config, workdir)
  os.makedirs(logdir, exist_ok=True)
  train.save_config(config, logdir)
  mesh = sharding.make_mesh()
  sharding.check_batch_divisible(p.batch_size, mesh)
  source = pipeline.make_source(config, workdir)
  dataset = pipeline.build_dataset(
      source, view_spec(config), seed=config.seed + 1, global_batch=p.batch_size,
      process_index=jax.process_index(), process_count=jax.process_count(),
      sample=pipeline.SampleViews(view_spec(config), p.view_scale, p.view_shift, p.frame_gap))
  data_iter = pipeline.make_iterator(dataset, config.data.num_workers, config.data.prefetch)
  model, optimizer = build_model(config), make_optimizer(config)
  init = functools.partial(init_state, config, model, optimizer)
  rng = jax.random.PRNGKey(config.seed)
  state_sharding = jax.tree.map(lambda _: sharding.replicated(mesh), jax.eval_shape(init, rng))
  state = jax.jit(init, out_shardings=state_sharding)(rng)
  manager = checkpoint.make_manager(stage_dir, config)
  state, data_iter = checkpoint.restore_latest(manager, state, data_iter, set_aside=True)
  step_fn = jax.jit(functools.partial(pretrain_step, config=config, model=model,
                                      optimizer=optimizer),
                    in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
                    out_shardings=(state_sharding, sharding.replicated(mesh)),
                    donate_argnums=(0,))
  writer = train.MetricWriter(logdir, prefix="pretrain/")
  console.say(f"pretraining the encoder from step {int(state.step)} to {p.num_steps} "
              f"(smtc_jax/pretrain.py); checkpoints in {manager.directory}")
  stage = train.Stage(p.num_steps, lambda _: step_fn,
                      functools.partial(progress_line, num_steps=p.num_steps))
  state, _ = train.run_loop(config, stage, state, data_iter, mesh, manager, writer)
  checkpoint.export_params_tree({"params": jax.device_get(state.ema_params)}, out)
  console.say(f"pretrained encoder (the teacher's) exported to {out}")
  return out


def progress_line(step, scalars, steps_per_sec, *, num_steps) -> str:
  eta = (num_steps - step) / max(steps_per_sec, 1e-9)
  return (f"pretrain step {step}/{num_steps} | loss {scalars['loss']:.4f} | agreement "
          f"{scalars['agreement']:.2f} | prototypes used {scalars['prototypes_used']:.2f} | "
          f"{steps_per_sec:.2f} steps/s | ETA {eta / 60:.1f} min")
