"""Self-supervised encoder pretraining for runs without a DINO checkpoint.

SMTC organises features that already separate things (paper Sec. 4.2 starts
from DINO). Where no such checkpoint exists, this stage makes one on the
training frames themselves: dense self-distillation in DINO's teacher-student
form, densely: a global view of a frame (a large crop, zoomed out) goes through
the EMA teacher, a local view inside it (magnified) through the student, and
every student token predicts, over K learned prototypes, the teacher's
assignment at the same point of the frame in the global view: a patch must tell
what the wider view around it shows (DINO's local-to-global crops). The teacher's assignments are balanced over the prototypes by
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
from smtc_jax import run_config
from smtc_jax import run_logs
from smtc_jax import sharding
from smtc_jax.data import pipeline
from smtc_jax.models import smtc
from smtc_jax.models import vit
from smtc_jax.training import loop
from smtc_jax.training import state as state_lib
from smtc_jax.training import step as step_lib

PRETRAIN_DIR = "pretrain"


class PrototypeHead(nn.Module):
  """DINO's projection head on every token: MLP -> L2-normalised bottleneck ->
  cosine scores against K L2-normalised prototypes. (..., D) -> (..., K)."""
  hidden: int
  bottleneck: int
  num_prototypes: int

  @nn.compact
  def __call__(self, x):
    x = vit.gelu(nn.Dense(self.hidden, name="fc1")(x))  # DINO: nn.GELU, the exact form
    x = vit.gelu(nn.Dense(self.hidden, name="fc2")(x))
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
  """Cross entropy of the local view's student tokens against the teacher's
  balanced assignment on the global view at the same frame point (DINO's
  local-to-global direction: a magnified patch must tell what the wider view
  around it shows).

  student, teacher: (B, 2, h, w, K) prototype scores of (global, local) views;
  boxes: (B, 2, 5). Returns (loss, metrics).
  """
  b, _, h, w, k = teacher.shape
  global_view, local_view = 0, 1
  targets = balanced_assignments(jax.lax.stop_gradient(teacher[:, global_view]).reshape(-1, k),
                                 epsilon=epsilon, num_iters=num_iters).reshape(b, h, w, k)
  centres = jnp.asarray(token_centres(h, w))
  points, inside = jax.vmap(corresponding_points, in_axes=(None, 0, 0))(
      centres, boxes[:, local_view], boxes[:, global_view])  # (B, L, 2), (B, L)
  target = jax.vmap(bilinear_sample)(targets, points)  # (B, L, K)
  log_student = jax.nn.log_softmax(student[:, local_view].reshape(b, h * w, k) / temperature, -1)
  weight = inside.astype(jnp.float32)
  count = jnp.maximum(jnp.sum(weight), 1.0)
  loss = jnp.sum(weight * -jnp.sum(target * log_student, -1)) / count
  agree = jnp.sum(weight * (jnp.argmax(target, -1) == jnp.argmax(log_student, -1))) / count
  used = jnp.mean(jnp.any(jax.nn.one_hot(jnp.argmax(targets, -1), k) > 0, axis=(0, 1, 2)))
  return loss, {"agreement": agree, "prototypes_used": used, "overlap": count / (b * h * w)}


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW with linear warm-up and cosine decay; no decay on 1-D parameters."""
  p = config.pretrain
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, p.learning_rate, p.warmup_steps, max(p.num_steps, p.warmup_steps + 1),
      end_value=p.learning_rate * config.optim.final_lr_ratio)
  return optax.chain(optax.clip_by_global_norm(p.grad_clip_norm),
                     optax.adamw(schedule, weight_decay=p.weight_decay,
                                 mask=state_lib.decay_mask))


def init_state(config, model, optimizer, rng) -> state_lib.TrainState:
  """Student and teacher start equal, from one dummy image."""
  params_rng, state_rng = jax.random.split(rng)
  image = jnp.zeros((1, *config.pretrain.resolution, 3), jnp.float32)
  return state_lib.new_state(model.init(params_rng, image)["params"], optimizer, state_rng)


def pretrain_step(state: state_lib.TrainState, batch, *, config, model, optimizer):
  """One step: the teacher on the global views, the student on the local ones,
  the dense loss, AdamW, EMA. batch: {'views': (B, 2, H, W, 3) uint8 (global,
  local), 'boxes': (B, 2, 5)}."""
  p = config.pretrain
  views = smtc.normalize(batch["views"], config)
  teacher = model.apply({"params": state.ema_params}, views[:, 0])  # (B, h, w, K)

  def loss_fn(params):
    student = model.apply({"params": params}, views[:, 1])
    both = lambda local: jnp.stack([teacher, local], axis=1)  # (B, 2, h, w, K)
    return dense_distillation_loss(both(student), both(teacher), batch["boxes"],
                                   temperature=p.temperature, epsilon=p.sinkhorn_epsilon,
                                   num_iters=p.sinkhorn_iters)

  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), **metrics}
  return state_lib.apply_gradients(state, grads, optimizer, ema_momentum=p.ema_momentum), metrics


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
  export the teacher; returns the export's folder. A finished export is reused
  if it was made under the same pretraining fields (run_config.PRETRAIN_FIELDS),
  else refused (run_config.ConfigMismatch), as is a resume under other ones."""
  out = export_dir(workdir)
  if os.path.isdir(out):
    made = checkpoint.stored_config(out)
    if made is not None:
      run_config.check_resume(made, config, out, run_config.PRETRAIN_FIELDS,
                              run_config.PRETRAIN_REUSABLE)
    console.say(f"pretrained encoder: {out} (already made)")
    return out
  p = config.pretrain
  stage_dir = os.path.join(workdir, PRETRAIN_DIR)
  logdir = loop.start_logs(config, workdir, os.path.join(stage_dir, checkpoint.CHECKPOINT_DIR),
                           run_config.PRETRAIN_FIELDS, run_config.PRETRAIN_RESUMABLE)
  mesh = sharding.make_mesh()
  sharding.check_batch_divisible(p.batch_size, mesh)
  source = pipeline.make_source(config, workdir)
  dataset = pipeline.build_dataset(
      source, view_spec(config), seed=config.seed + 1, global_batch=p.batch_size,
      process_index=jax.process_index(), process_count=jax.process_count(),
      sample=pipeline.SampleViews(view_spec(config), p.local_side, p.frame_gap))
  data_iter = pipeline.make_iterator(dataset, config.data.num_workers, config.data.prefetch)
  model, optimizer = build_model(config), make_optimizer(config)
  state, state_sharding = state_lib.place_state(
      functools.partial(init_state, config, model, optimizer), jax.random.PRNGKey(config.seed),
      mesh)
  manager = checkpoint.make_manager(stage_dir, config)
  state, data_iter = checkpoint.restore_latest(manager, state, data_iter, set_aside=True)
  step_fn = step_lib.compile_step(
      functools.partial(pretrain_step, config=config, model=model, optimizer=optimizer),
      mesh, state_sharding)
  writer = loop.MetricWriter(logdir, prefix="pretrain/",
                             mirror=run_logs.mirror_for(config, workdir))
  console.say(f"pretraining the encoder from step {int(state.step)} to {p.num_steps} "
              f"(smtc_jax/pretrain.py); checkpoints in {manager.directory}")
  stage = loop.Stage(p.num_steps, ((0, step_fn),),
                     functools.partial(progress_line, num_steps=p.num_steps),
                     mesh, manager, writer)
  state, _ = loop.run_loop(config, stage, state, data_iter)
  checkpoint.export_params_tree({"params": jax.device_get(state.ema_params)}, out, config)
  console.say(f"pretrained encoder (the teacher's) exported to {out}")
  return out


def progress_line(step, scalars, steps_per_sec, *, num_steps) -> str:
  fields = (f"loss {scalars['loss']:.4f} | agreement {scalars['agreement']:.2f} | "
            f"prototypes used {scalars['prototypes_used']:.2f}")
  return loop.progress_line("pretrain ", step, num_steps, fields, steps_per_sec)
