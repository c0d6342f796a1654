"""The three SMTC objectives (paper Sec. 3.4, eq. 8-13) as pure functions, and an
optional random-walk term on the encoder (ours, off by default: loss.cycle_weight).

Inputs are the model's output dicts (see `smtc_jax.models.smtc`). All losses
run in float32. Every frame-pair sum is computed for all pairs at once.
"""

import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn

from smtc_jax.matching import bipartite_match


def frame_pairs(num_frames: int, include_same: bool = False):
  """Ordered frame pairs (t, j) as two int arrays, t != j unless include_same."""
  pairs = [(t, j) for t, j in itertools.product(range(num_frames), repeat=2)
           if include_same or t != j]
  if not pairs:
    return np.zeros((0,), np.int32), np.zeros((0,), np.int32)
  first, second = np.asarray(pairs, dtype=np.int32).T
  return first, second


def l2_normalize(x, axis=-1, eps=1e-12):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), eps)


def sinkhorn_plan(cost, a, b, *, epsilon: float, num_iters: int):
  """Entropic OT plan (n, m) for `cost` (n, m) and marginals a (n,), b (m,).

  Runs exactly `num_iters` Sinkhorn-Knopp iterations with OTT-JAX in log
  domain, each iteration scaling rows first and then columns (the order of the
  authors' code: after any number of iterations the column sums equal b). No
  gradient flows through the plan.
  """
  cost, a, b = jax.lax.stop_gradient((cost, a, b))
  # OTT updates the column potential first; solving the transposed problem
  # makes its first update the rows of ours.
  geom = geometry.Geometry(cost_matrix=cost.T, epsilon=epsilon)
  problem = linear_problem.LinearProblem(geom, a=b, b=a)
  solver = sinkhorn.Sinkhorn(
      lse_mode=True, inner_iterations=1, min_iterations=num_iters,
      max_iterations=num_iters, implicit_diff=None)
  return jax.lax.stop_gradient(solver(problem).matrix.T)


SINKHORN_MARGINALS = ("uniform", "feature_norm")  # loss.sinkhorn_marginals


def _marginals(features, mode: str):
  """Sinkhorn marginals for tokens (..., L, D): uniform (eq. 8) or the L1 norms
  of the L2-normalised tokens, normalised to sum 1 (authors' code)."""
  if mode == "uniform":
    shape = features.shape[:-1]
    return jnp.full(shape, 1.0 / shape[-1], jnp.float32)
  mass = jnp.abs(l2_normalize(features)).sum(-1)  # feature_norm
  return mass / mass.sum(-1, keepdims=True)


def semantic_statistics(teacher):
  """Each semantic's mean logit and mean mask over clips, frames and tokens:
  two (N,) of a teacher output's (B, T, N, L) semantic_logits and _masks."""
  mean = lambda x: jnp.mean(x, axis=(0, 1, 3))
  return mean(teacher["semantic_logits"]), mean(teacher["semantic_masks"])


TEACHER_CENTRE_GATES = ("latch", "step")  # loss.teacher_centre_gate


def teacher_centre(statistics, step, *, steps: int, share: float, gate: str = "latch",
                   fired=False):
  """(centre (N,), centred): the mean logits of `statistics` (semantic_statistics
  of the step's whole batch) and 1.0 on a step before `steps` where the gate is
  open; zeros and 0.0 on any other step. The gate opens on a step where one
  semantic's mean mask exceeds `share`; with gate 'latch' it stays open through
  the warm-up once it has (`fired`: it opened on an earlier step), with 'step'
  each step decides alone."""
  mean, masks = statistics
  collapsed = jnp.max(masks) > share
  if gate == "latch":
    collapsed = collapsed | fired
  on = (step < steps) & collapsed
  return jnp.where(on, mean, 0.0), on.astype(jnp.float32)


def semantic_alignment_loss(student_logits, teacher_logits, teacher_features, *,
                            epsilon: float, num_iters: int, marginals: str, eps: float,
                            centre=None, teacher_temperature: float = 1.0):
  """L_sem (eq. 8-9), averaged over clips and ordered frame pairs t != j.

  student_logits, teacher_logits: (B, T, N, L) stage-1 logits;
  teacher_features: (B, T, L, D). The patch correspondence pi_tj comes from the
  teacher's features with cost 1 - cos (= -C_tj on unit features up to a constant).
  The targets are the softmax of the teacher's logits less `centre` (N,) if
  given (ours: teacher_centre), over `teacher_temperature`.
  """
  _, t, _, _ = student_logits.shape
  first, second = frame_pairs(t)
  if first.size == 0:
    return jnp.zeros((), jnp.float32)
  feats = l2_normalize(jax.lax.stop_gradient(teacher_features).astype(jnp.float32))
  cost = 1.0 - jnp.einsum("bkud,bkvd->bkuv", feats[:, first], feats[:, second])
  a = _marginals(feats[:, first], marginals)  # (B, K, L)
  b = _marginals(feats[:, second], marginals)
  solve = lambda c, x, y: sinkhorn_plan(c, x, y, epsilon=epsilon, num_iters=num_iters)
  plan = jax.vmap(jax.vmap(solve))(cost, a, b)  # (B, K, L, L)
  log_student = jnp.log(jax.nn.softmax(student_logits[:, first], axis=2) + eps)  # (B, K, N, L)
  if centre is not None:
    teacher_logits = teacher_logits - centre[:, None]
  teacher = jax.lax.stop_gradient(
      jax.nn.softmax(teacher_logits[:, second] / teacher_temperature, axis=2))
  cross_entropy = -jnp.einsum("bknu,bknv->bkuv", log_student, teacher)
  return jnp.mean(jnp.sum(plan * cross_entropy, axis=(-2, -1)))


def mask_regularization_loss(semantic_masks, eps: float):
  """L_reg (eq. 10): mean cosine similarity between different semantic masks.

  semantic_masks: (B, T, N, L) probabilities. Averaged over clips, frames and
  the N(N-1) ordered pairs; zero when N = 1.
  """
  n = semantic_masks.shape[2]
  if n < 2:
    return jnp.zeros((), jnp.float32)
  masks = l2_normalize(semantic_masks + eps)
  gram = jnp.einsum("btnl,btml->btnm", masks, masks)
  off_diagonal = 1.0 - jnp.eye(n)
  return jnp.sum(gram * off_diagonal) / (off_diagonal.sum() * gram.shape[0] * gram.shape[1])


def _at_least(x, threshold, strict: bool):
  """x >= threshold (eq. 11), or x > threshold with `strict` (the code's training)."""
  return x > threshold if strict else x >= threshold


def large_semantics(semantic_masks, *, mask_tau: float, tau1: float, strict: bool = False):
  """First criterion of eq. 11: (..., N) bool, semantic n's mask binarised at
  probability mask_tau covers at least tau1 of the frame (more than, with
  `strict`). semantic_masks: (..., N, L)."""
  return _at_least(jnp.mean((semantic_masks > mask_tau).astype(jnp.float32), axis=-1), tau1,
                   strict)


def valid_instances(semantic_masks, semantic_slots, instance_slots, *,
                    mask_tau: float, tau1: float, tau2: float, use_area: bool = True,
                    strict: bool = False):
  """Valid-instance indicator I_t (eq. 11): (B, T, N, P) in {0, 1}.

  Instance (n, p) is valid when semantic n's binarised mask (probability >
  mask_tau) covers at least tau1 of the frame and cos(S[n], O[n, p]) >= tau2.
  `use_area=False` drops the first criterion (instance stage only: no masks;
  the code's inference: the score alone). `strict` compares both criteria
  with > (the code's training, train.py filter_valid_instance).
  """
  similarity = jnp.einsum("btnd,btnpd->btnp", l2_normalize(semantic_slots),
                          l2_normalize(instance_slots))
  valid = _at_least(similarity, tau2, strict)
  if use_area:
    valid = valid & large_semantics(semantic_masks, mask_tau=mask_tau, tau1=tau1,
                                    strict=strict)[..., None]
  return jax.lax.stop_gradient(valid.astype(jnp.float32))


def valid_pair_count(valid, same_frame_pairs: bool):
  """The number L_obj divides by: valid instances (B, T, N, P) counted once
  per frame pair (t, j) whose first frame they are in."""
  first, _ = frame_pairs(valid.shape[1], include_same=same_frame_pairs)
  return jnp.sum(valid[:, first])


INSTANCE_FORMS = ("l2_margin", "cosine")  # loss.instance_form


def object_consistency_loss(objects, teacher_objects, valid, teacher_valid, *,
                            form: str, margin: float, cosine_margin: float,
                            same_frame_pairs: bool, count=None):
  """L_obj (eq. 12): the valid student instances' terms summed over frame
  pairs, divided by `count`, the number of those instances (valid_pair_count).
  None counts them in these inputs; a micro-batch of a larger batch passes the
  whole batch's count, which makes its L_obj its share of the whole batch's.

  objects, teacher_objects: (B, T, N, P, D) unit vectors; valid, teacher_valid:
  (B, T, N, P). Instances are matched per semantic by exact bipartite matching
  on 1 - cos. `form='l2_margin'` (paper): I_t * (I_j[match] * ||o - o_match||
  + sum_{q != match} relu(margin - ||o - o_q||)); `form='cosine'` (code):
  I_t * (mean_{q != match} relu(cos_q - cosine_margin) - I_j[match] * cos_match).
  """
  _, t, _, p, _ = objects.shape
  first, second = frame_pairs(t, include_same=same_frame_pairs)
  if first.size == 0:
    return jnp.zeros((), jnp.float32)
  student = objects[:, first].astype(jnp.float32)  # (B, K, N, P, D)
  teacher = jax.lax.stop_gradient(teacher_objects[:, second]).astype(jnp.float32)
  valid_s = valid[:, first]  # (B, K, N, P)
  valid_t = teacher_valid[:, second]
  similarity = jnp.einsum("bknpd,bknqd->bknpq", student, teacher)
  match = bipartite_match(jax.lax.stop_gradient(1.0 - similarity))  # (B, K, N, P)
  positive = jax.nn.one_hot(match, p, dtype=jnp.float32)  # (B, K, N, P, Q)
  negative = 1.0 - positive
  valid_match = jnp.take_along_axis(valid_t, match, axis=-1)
  if form == "l2_margin":
    sq = (jnp.sum(student**2, -1)[..., None] + jnp.sum(teacher**2, -1)[..., None, :]
          - 2.0 * similarity)
    distance = jnp.sqrt(jnp.maximum(sq, 0.0) + 1e-12)
    pull = jnp.sum(positive * distance, -1)
    push = jnp.sum(negative * jax.nn.relu(margin - distance), -1)
    per_instance = valid_match * pull + push
  else:  # cosine
    pull = -jnp.sum(positive * similarity, -1)
    push = jnp.sum(negative * jax.nn.relu(similarity - cosine_margin), -1) / max(p - 1, 1)
    per_instance = push + valid_match * pull
  if count is None:
    count = valid_pair_count(valid, same_frame_pairs)
  return jnp.sum(valid_s * per_instance) / jnp.maximum(count, 1.0)


def cycle_consistency_loss(features, *, temperature: float, eps: float):
  """Contrastive random walk (Jabri et al. 2020), an encoder-only term that is
  not SMTC's: walk from frame 0 to frame k and back along the clip, each step a
  softmax over the next frame's cells, and score the return to the start cell.

  features: (B, T, L, D). Mean over clips, cells and the T-1 walk lengths.
  Gives the encoder the temporal correspondence a DINO start brings (ours).
  """
  t = features.shape[1]
  if t < 2:
    return jnp.zeros((), jnp.float32)
  f = l2_normalize(features.astype(jnp.float32))
  sim = jnp.einsum("btld,btmd->btlm", f[:, :-1], f[:, 1:]) / temperature  # (B, T-1, L, L)
  ahead = jax.nn.softmax(sim, axis=-1)  # frame s -> s+1
  back = jax.nn.softmax(jnp.swapaxes(sim, -1, -2), axis=-1)  # frame s+1 -> s
  walk_out, walk_back, terms = None, None, []
  for k in range(t - 1):
    walk_out = ahead[:, k] if k == 0 else walk_out @ ahead[:, k]  # 0 -> k+1
    walk_back = back[:, k] if k == 0 else back[:, k] @ walk_back  # k+1 -> 0
    returned = jnp.einsum("bij,bji->bi", walk_out, walk_back)  # diagonal of the cycle, (B, L)
    terms.append(-jnp.mean(jnp.log(returned + eps)))
  return jnp.mean(jnp.stack(terms))


def top_semantic_share(semantic_masks):
  """Per clip, the largest share of its mass (frames x tokens) any one semantic
  takes, averaged over clips: 1 / N when the semantics share the frames evenly,
  near 1 when one semantic has swallowed every frame (a collapse L_reg cannot
  undo: flat masks are a stationary point of eq. 10). semantic_masks: (B, T, N, L)."""
  return jnp.mean(jnp.max(jnp.mean(semantic_masks, axis=(1, 3)), axis=-1))


def instance_validity(out, config: ml_collections.ConfigDict):
  """I_t (eq. 11) of a model output with the config's thresholds: (B, T, N, P)."""
  l = config.loss
  return valid_instances(
      out["semantic_masks"], out["semantic_slots"], out["instance_slots"],
      mask_tau=l.valid_mask_tau, tau1=l.tau1, tau2=l.tau2,
      use_area=config.model.stages != "instance", strict=l.valid_strict)


def valid_student_count(student, config: ml_collections.ConfigDict):
  """The count L_obj of the student output divides by (valid_pair_count)."""
  return valid_pair_count(instance_validity(student, config), config.loss.obj_same_frame_pairs)


def smtc_loss(student, teacher, config: ml_collections.ConfigDict, *,
              batch_fraction: float = 1.0, obj_count=None, step=None,
              teacher_statistics=None, centre_fired=False):
  """Total loss of eq. 13 and its terms: (total, {'sem', 'reg', 'obj', 'cycle',
  'valid', 'top_share', 'centred'}).

  `valid` is the fraction of valid student instances, `top_share` the
  student's top_semantic_share and `centred` 1.0 if the teacher was centred
  (metrics, not losses). With loss.teacher_centre_steps, `step` is the train
  step (None: no centring) and `centre_fired` whether the latched gate opened on
  an earlier step (teacher_centre).
  For a micro-batch of a step's batch, `batch_fraction` is its share of the
  clips and `obj_count` the whole batch's valid_student_count: L_sem, L_reg,
  `valid` and `top_share` are means over clips, so they are weighted by the
  share, and L_obj's numerator is divided by the whole batch's count, as the
  teacher is centred by the whole batch's `teacher_statistics`. The total and
  the terms are then the micro-batch's contributions, which sum over the
  micro-batches to the whole batch's loss. The defaults are a whole batch (its
  own count and statistics).
  """
  l, m = config.loss, config.model
  has_semantics = m.stages != "instance"
  zero = jnp.zeros((), jnp.float32)
  centre, centred = None, zero
  if l.sem_weight and l.teacher_centre_steps and step is not None:
    if teacher_statistics is None:
      teacher_statistics = semantic_statistics(teacher)
    centre, centred = teacher_centre(teacher_statistics, step, steps=l.teacher_centre_steps,
                                     share=l.teacher_centre_share, gate=l.teacher_centre_gate,
                                     fired=centre_fired)
  sem = semantic_alignment_loss(
      student["semantic_logits"], teacher["semantic_logits"], teacher["features"],
      epsilon=l.sinkhorn_epsilon, num_iters=l.sinkhorn_iters,
      marginals=l.sinkhorn_marginals, eps=l.eps, centre=centre,
      teacher_temperature=l.teacher_temperature) if l.sem_weight else zero
  reg = mask_regularization_loss(student["semantic_masks"], l.eps) if l.reg_weight else zero
  valid, teacher_valid = instance_validity(student, config), instance_validity(teacher, config)
  obj = object_consistency_loss(
      student["objects"], teacher["objects"], valid, teacher_valid,
      form=l.instance_form, margin=l.margin, cosine_margin=l.cosine_margin,
      same_frame_pairs=l.obj_same_frame_pairs, count=obj_count) if l.obj_weight else zero
  cycle = cycle_consistency_loss(
      student["features"], temperature=l.cycle_temperature, eps=l.eps) if l.cycle_weight else zero
  sem, reg, cycle = batch_fraction * sem, batch_fraction * reg, batch_fraction * cycle
  total = l.sem_weight * sem + l.reg_weight * reg + l.obj_weight * obj + l.cycle_weight * cycle
  top_share = (top_semantic_share(student["semantic_masks"]) if has_semantics else zero)
  return total, {"sem": sem, "reg": reg, "obj": obj, "cycle": cycle,
                 "valid": batch_fraction * jnp.mean(valid),
                 "top_share": batch_fraction * top_share, "centred": batch_fraction * centred}
