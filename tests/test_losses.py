import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from configs import base
from smtc_jax import losses
from smtc_jax.models import smtc
from tests.conftest import model_rngs


def _plain_sinkhorn(cost, a, b, epsilon, iters):
  """Direct Sinkhorn-Knopp formula: u = a / Kv, v = b / K^T u, plan = u K v."""
  kernel = np.exp(-cost / epsilon)
  v = np.ones_like(b)
  for _ in range(iters):
    u = a / (kernel @ v)
    v = b / (kernel.T @ u)
  return u[:, None] * kernel * v[None, :]


def _unit_tokens(seed, shape):
  x = np.random.default_rng(seed).normal(size=shape)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("marginals", ["uniform", "feature_norm"])
def test_sinkhorn_plan_marginals_at_paper_sizes(marginals):
  # HW = 256 tokens (16x16 grid at 256x256), epsilon 0.05, the config's iterations.
  loss_config = base.get_config().loss
  feats = _unit_tokens(0, (2, 256, 384)).astype(np.float32)
  cost = 1.0 - feats[0] @ feats[1].T
  a = np.asarray(losses._marginals(jnp.asarray(feats[0]), marginals))
  b = np.asarray(losses._marginals(jnp.asarray(feats[1]), marginals))
  plan = np.asarray(jax.jit(lambda c, x, y: losses.sinkhorn_plan(
      c, x, y, epsilon=loss_config.sinkhorn_epsilon, num_iters=loss_config.sinkhorn_iters))(cost, a, b))
  assert np.abs(plan.sum(1) - a).max() <= 1e-3 * a.min()
  assert np.abs(plan.sum(0) - b).max() <= 1e-3 * b.min()
  assert (plan >= 0).all()


def test_sinkhorn_plan_equals_the_direct_formula_after_three_iterations():
  feats = _unit_tokens(1, (2, 64, 16))
  cost = 1.0 - feats[0] @ feats[1].T
  rng = np.random.default_rng(2)
  a, b = rng.uniform(0.5, 1.5, 64), rng.uniform(0.5, 1.5, 64)
  a, b = a / a.sum(), b / b.sum()
  expected = _plain_sinkhorn(cost, a, b, 0.05, 3)
  got = np.asarray(losses.sinkhorn_plan(jnp.asarray(cost, jnp.float32), jnp.asarray(a, jnp.float32),
                                        jnp.asarray(b, jnp.float32), epsilon=0.05, num_iters=3))
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-9)


def test_sinkhorn_plan_passes_no_gradient():
  cost = jnp.asarray(_unit_tokens(3, (8, 8)), jnp.float32)
  a = jnp.full((8,), 1 / 8)
  grad = jax.grad(lambda c: jnp.sum(losses.sinkhorn_plan(c, a, a, epsilon=0.05, num_iters=5) * c))(cost)
  # Only the explicit factor c contributes: d/dc sum(plan * c) = plan.
  np.testing.assert_allclose(grad, losses.sinkhorn_plan(cost, a, a, epsilon=0.05, num_iters=5), rtol=1e-6)


def _one_hot_logits(labels, n, scale=30.0):
  return scale * jax.nn.one_hot(labels, n, axis=-2)


def test_semantic_alignment_is_minimal_for_consistent_masks_and_grows_when_shuffled():
  t, l, n = 3, 16, 4
  # Orthogonal token features: the plan is (almost exactly) the identity / L.
  feats = jnp.broadcast_to(jnp.eye(l), (1, t, l, l))
  labels = jnp.asarray(np.random.default_rng(0).integers(0, n, (1, t, l)).astype(np.int32))
  labels = jnp.broadcast_to(labels[:, :1], labels.shape)  # same labels in every frame
  teacher = _one_hot_logits(labels, n)
  kw = dict(epsilon=0.05, num_iters=50, marginals="uniform", eps=1e-8)
  consistent = losses.semantic_alignment_loss(teacher, teacher, feats, **kw)
  shuffled = losses.semantic_alignment_loss(_one_hot_logits((labels + 1) % n, n), teacher, feats, **kw)
  assert consistent < 1e-3
  assert shuffled > 1.0


def test_teacher_centre_removes_a_lead_shared_by_every_token():
  # A teacher whose semantic 0 leads every token by the same 5 logits: centred,
  # its targets are those of the teacher without the lead, centred (a shift of
  # one semantic's logits over the whole batch is exactly what the centre removes).
  rng = np.random.default_rng(0)
  b, t, n, l = 2, 3, 4, 16
  feats = jnp.asarray(rng.normal(size=(b, t, l, 8)), jnp.float32)
  student = jnp.asarray(rng.normal(size=(b, t, n, l)), jnp.float32)
  teacher = jnp.asarray(rng.normal(size=(b, t, n, l)), jnp.float32)
  lead = jnp.zeros((n, 1)).at[0].set(5.0)
  kw = dict(epsilon=0.05, num_iters=20, marginals="uniform", eps=1e-8)
  sem = lambda logits, **extra: float(losses.semantic_alignment_loss(student, logits, feats,
                                                                     **kw, **extra))
  mean = lambda logits: losses.semantic_statistics(
      {"semantic_logits": logits, "semantic_masks": jax.nn.softmax(logits, axis=2)})[0]
  by_hand = teacher - teacher.mean(axis=(0, 1, 3))[:, None]
  np.testing.assert_allclose(sem(teacher + lead, centre=mean(teacher + lead)), sem(by_hand),
                             rtol=1e-5)
  assert abs(sem(teacher + lead) - sem(teacher)) > 0.05  # uncentred, the lead changes the targets


def test_teacher_is_centred_in_the_first_steps_while_one_semantic_holds_over_the_share():
  logits = jnp.zeros((1, 1, 4, 10)).at[:, :, 0].set(3.0)  # semantic 0 leads every token
  statistics = losses.semantic_statistics(
      {"semantic_logits": logits, "semantic_masks": jax.nn.softmax(logits, axis=2)})
  top = float(statistics[1].max())
  np.testing.assert_allclose(top, np.exp(3.0) / (np.exp(3.0) + 3), rtol=1e-6)
  centre = lambda step, share: losses.teacher_centre(statistics, jnp.asarray(step), steps=50,
                                                     share=share)
  offset, on = centre(49, top - 0.01)
  np.testing.assert_allclose(offset, [3.0, 0.0, 0.0, 0.0])
  assert float(on) == 1.0
  for step, share in ((50, top - 0.01), (0, top + 0.01)):  # past the steps; below the share
    offset, on = centre(step, share)
    assert float(on) == 0.0 and not np.any(np.asarray(offset))


def test_latched_gate_stays_open_through_the_warm_up_once_it_has_fired():
  logits = jnp.zeros((1, 1, 4, 10)).at[:, :, 0].set(1.0)
  statistics = losses.semantic_statistics(
      {"semantic_logits": logits, "semantic_masks": jax.nn.softmax(logits, axis=2)})
  below = float(statistics[1].max()) + 0.01  # no semantic holds this share
  gate = lambda gate, step, fired: float(losses.teacher_centre(
      statistics, jnp.asarray(step), steps=50, share=below, gate=gate, fired=jnp.asarray(fired))[1])
  assert gate("latch", 10, True) == 1.0  # fired earlier: open below the share
  assert gate("latch", 10, False) == 0.0
  assert gate("latch", 50, True) == 0.0  # the warm-up is over
  assert gate("step", 10, True) == 0.0  # each step alone


def test_teacher_temperature_sharpens_the_targets():
  rng = np.random.default_rng(1)
  feats = jnp.asarray(rng.normal(size=(1, 2, 16, 8)), jnp.float32)
  logits = jnp.asarray(rng.normal(size=(1, 2, 4, 16)), jnp.float32)
  kw = dict(epsilon=0.05, num_iters=20, marginals="uniform", eps=1e-8)
  half = losses.semantic_alignment_loss(logits, logits, feats, teacher_temperature=0.5, **kw)
  doubled = losses.semantic_alignment_loss(logits, 2.0 * logits, feats, **kw)
  np.testing.assert_allclose(half, doubled, rtol=1e-6)


def test_top_semantic_share_is_the_largest_mean_mask_per_clip():
  n = 4
  uniform = jnp.full((2, 3, n, 10), 1.0 / n)
  np.testing.assert_allclose(losses.top_semantic_share(uniform), 1.0 / n, rtol=1e-6)
  swallowed = jax.nn.one_hot(jnp.zeros((2, 3, 10), jnp.int32), n, axis=2)  # semantic 0 everywhere
  np.testing.assert_allclose(losses.top_semantic_share(swallowed), 1.0, rtol=1e-6)
  masks = np.asarray(jax.nn.softmax(np.random.default_rng(2).normal(size=(3, 2, n, 10)), axis=2))
  expected = np.mean([max(masks[c, :, k].mean() for k in range(n)) for c in range(3)])
  np.testing.assert_allclose(losses.top_semantic_share(jnp.asarray(masks)), expected, rtol=1e-5)


def test_mask_regularization_is_zero_for_orthogonal_and_one_for_identical_masks():
  orthogonal = jax.nn.one_hot(jnp.arange(8) % 4, 4, axis=0)[None, None]  # (1, 1, 4, 8)
  assert abs(float(losses.mask_regularization_loss(orthogonal, eps=0.0))) < 1e-6
  identical = jnp.full((1, 2, 4, 8), 0.25)
  np.testing.assert_allclose(losses.mask_regularization_loss(identical, eps=1e-8), 1.0, rtol=1e-6)
  assert float(losses.mask_regularization_loss(jnp.ones((1, 1, 1, 8)), eps=1e-8)) == 0.0


def test_valid_instances_need_area_and_similarity():
  masks = jnp.zeros((1, 1, 2, 10)).at[0, 0, 0, :3].set(1.0).at[0, 0, 1, :1].set(1.0)
  semantic = jnp.asarray([[[[1.0, 0.0], [1.0, 0.0]]]])  # (1, 1, 2, 2)
  instance = jnp.asarray([[[[[1.0, 0.1], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]]]])  # (1, 1, 2, 2, 2)
  valid = losses.valid_instances(masks, semantic, instance, mask_tau=0.5, tau1=0.2, tau2=0.5)
  # semantic 0 covers 30% >= 20%: instance 0 (cos ~1) valid, instance 1 (cos 0) not;
  # semantic 1 covers 10%: nothing valid.
  np.testing.assert_array_equal(valid[0, 0], [[1.0, 0.0], [0.0, 0.0]])
  no_area = losses.valid_instances(masks, semantic, instance, mask_tau=0.5, tau1=0.2, tau2=0.5,
                                   use_area=False)
  np.testing.assert_array_equal(no_area[0, 0], [[1.0, 0.0], [1.0, 1.0]])


def test_loss_valid_strict_drops_instances_exactly_at_the_thresholds():
  # Semantic 0 covers exactly tau1 = 0.2 of the frame; its instance 0 has cos exactly
  # 0.5 = tau2 (e1 against (1, 1, 1, 1) / 2), instance 1 cos 1; semantic 1 covers 0.3.
  masks = jnp.zeros((1, 1, 2, 10)).at[0, 0, 0, :2].set(1.0).at[0, 0, 1, :3].set(1.0)
  e1 = jnp.eye(4)[0]
  out = {"semantic_masks": masks, "semantic_slots": jnp.stack([e1, e1])[None, None],
         "instance_slots": jnp.stack([jnp.stack([jnp.ones(4), e1])] * 2)[None, None]}
  config = base.get_config()
  np.testing.assert_array_equal(losses.instance_validity(out, config)[0, 0],
                                [[1.0, 1.0], [1.0, 1.0]])  # paper: >= on both criteria
  config.loss.valid_strict = True
  np.testing.assert_array_equal(losses.instance_validity(out, config)[0, 0],
                                [[0.0, 0.0], [0.0, 1.0]])  # code: > on both


@pytest.mark.parametrize("form,minimum", [("l2_margin", 0.0), ("cosine", -1.0)])
def test_object_loss_is_minimal_for_identical_student_and_teacher(form, minimum):
  b, t, n, p, d = 1, 3, 2, 3, 8
  objects = jnp.broadcast_to(jnp.eye(p, d), (b, t, n, p, d))  # orthogonal unit vectors
  valid = jnp.ones((b, t, n, p))
  kw = dict(form=form, margin=1.0, cosine_margin=0.5, same_frame_pairs=False)
  best = losses.object_consistency_loss(objects, objects, valid, valid, **kw)
  np.testing.assert_allclose(best, minimum, atol=1e-5)
  # A permuted teacher is matched back: same loss.
  permuted = objects[..., ::-1, :]
  np.testing.assert_allclose(losses.object_consistency_loss(objects, permuted, valid, valid, **kw),
                             minimum, atol=1e-5)
  # Moving the student away from the teacher costs.
  rotated = jnp.broadcast_to(jnp.roll(jnp.eye(p, d), 1, axis=-1) * 0.6 + jnp.eye(p, d) * 0.8,
                             objects.shape)
  assert losses.object_consistency_loss(rotated, objects, valid, valid, **kw) > minimum + 0.05


def test_object_loss_ignores_invalid_student_instances_and_counts_valid_ones():
  b, t, n, p, d = 1, 2, 1, 2, 4
  objects = jnp.broadcast_to(jnp.eye(p, d), (b, t, n, p, d))
  far = jnp.broadcast_to(jnp.eye(p, d)[::-1] * -1.0, objects.shape)
  valid = jnp.zeros((b, t, n, p))
  kw = dict(form="l2_margin", margin=1.0, cosine_margin=0.5, same_frame_pairs=False)
  assert float(losses.object_consistency_loss(far, objects, valid, valid, **kw)) == 0.0
  one_valid = valid.at[0, 0, 0, 0].set(1.0)
  # Student (0,0) = -e1 matches the teacher's nearest slot; distance to e_1 is 2.
  value = float(losses.object_consistency_loss(far, objects, one_valid, jnp.ones_like(valid), **kw))
  assert value > 1.0


def test_all_losses_are_finite_with_finite_gradients_at_initialisation(tiny_config):
  tiny_config.loss.cycle_weight = 1.0
  model = smtc.build_model(tiny_config)
  clip = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 32, 32, 3))
  variables = model.init(model_rngs(0), clip)

  @jax.jit
  def loss_fn(params):
    student = model.apply({"params": params}, clip, rngs=model_rngs(1))
    teacher = model.apply({"params": params}, clip * 0.9, rngs=model_rngs(2))
    return losses.smtc_loss(student, jax.lax.stop_gradient(teacher), tiny_config)

  (total, terms), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables["params"])
  for name, value in {"total": total, **terms}.items():
    assert np.isfinite(float(value)), name
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  assert np.abs(np.asarray(grads["slot_attention"]["mu"])).max() > 0


def test_teacher_is_centred_for_the_first_teacher_centre_steps_only(tiny_config):
  model = smtc.build_model(tiny_config)
  clip = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 32, 32, 3))
  variables = model.init(model_rngs(0), clip)
  student = model.apply(variables, clip, rngs=model_rngs(1))
  teacher = model.apply(variables, clip * 0.9, rngs=model_rngs(2))
  terms = lambda step: jax.jit(lambda s: losses.smtc_loss(
      student, teacher, tiny_config, step=s)[1])(jnp.asarray(step))
  plain = losses.smtc_loss(student, teacher, tiny_config)[1]["sem"]
  tiny_config.loss.teacher_centre_steps = 5  # teacher_centre_share 0: any step before 5
  kw = dict(epsilon=tiny_config.loss.sinkhorn_epsilon, num_iters=tiny_config.loss.sinkhorn_iters,
            marginals=tiny_config.loss.sinkhorn_marginals, eps=tiny_config.loss.eps)
  logits = teacher["semantic_logits"]
  centred = losses.semantic_alignment_loss(student["semantic_logits"], logits, teacher["features"],
                                           centre=logits.mean(axis=(0, 1, 3)), **kw)
  assert abs(float(centred) - float(plain)) > 1e-4  # the centre changes this teacher's targets
  np.testing.assert_allclose(terms(4)["sem"], centred, rtol=1e-5)
  np.testing.assert_allclose(terms(5)["sem"], plain, rtol=1e-5)
  assert float(terms(4)["centred"]) == 1.0 and float(terms(5)["centred"]) == 0.0


def _plain_random_walk_loss(features, temperature):
  """Jabri et al.'s palindrome walks written out: for each clip and length k,
  the product of forward then backward transition matrices, -log of its diagonal."""
  f = features / np.linalg.norm(features, axis=-1, keepdims=True)
  b, t = f.shape[:2]
  terms = []
  for k in range(1, t):
    for clip in f:
      cycle = np.eye(clip.shape[1])
      for s in range(k):
        cycle = cycle @ special.softmax(clip[s] @ clip[s + 1].T / temperature, axis=-1)
      for s in range(k, 0, -1):
        cycle = cycle @ special.softmax(clip[s] @ clip[s - 1].T / temperature, axis=-1)
      terms.append(-np.log(np.diag(cycle)).mean())
  return np.mean(terms)


def test_cycle_consistency_equals_the_walks_written_out():
  features = np.random.default_rng(0).normal(size=(2, 4, 9, 5))
  ours = losses.cycle_consistency_loss(jnp.asarray(features, jnp.float32), temperature=0.3, eps=0.0)
  np.testing.assert_allclose(float(ours), _plain_random_walk_loss(features, 0.3), rtol=1e-5)


def test_cycle_consistency_rewards_features_that_follow_their_cells():
  # Every frame's cells are the first frame's, permuted: a walk can return to
  # its start exactly. Fresh random features per frame give it no way back.
  rng = np.random.default_rng(1)
  first = _unit_tokens(2, (16, 32))
  tracked = np.stack([first[rng.permutation(16)] for _ in range(4)])[None]
  untracked = _unit_tokens(3, (1, 4, 16, 32))
  loss = lambda f: float(losses.cycle_consistency_loss(jnp.asarray(f, jnp.float32),
                                                       temperature=0.05, eps=1e-8))
  assert loss(tracked) < 0.01 < 1.0 < loss(untracked)
