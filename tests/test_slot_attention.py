import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smtc_jax.models.slot_attention import SemanticAwareSlotAttention


def _run(module, inputs, noise, variables=None):
  if variables is None:
    variables = module.init(jax.random.PRNGKey(0), inputs, noise)
  return variables, module.apply(variables, inputs, noise)


def _inputs(b=2, l=36, d=16, n=4, p=3, seed=0):
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  return jax.random.normal(k1, (b, l, d)), jax.random.normal(k2, (b, n, p, d))


@pytest.mark.parametrize("update", ["gru", "residual"])
def test_stage1_masks_sum_to_one_over_semantics_at_every_token(update):
  inputs, noise = _inputs()
  module = SemanticAwareSlotAttention(num_semantics=4, num_instances=3, slot_update=update)
  _, out = _run(module, inputs, noise)
  masks = jax.nn.softmax(out["semantic_logits"], axis=1)
  np.testing.assert_allclose(masks.sum(axis=1), 1.0, atol=1e-5)
  assert out["semantic_slots"].shape == (2, 4, 16)
  assert out["instance_logits"].shape == (2, 4, 3, 36)
  assert out["instance_slots"].shape == (2, 4, 3, 16)


def test_instance_slots_only_read_tokens_inside_their_semantic_mask():
  # N = 2 with tau = 0.5 partitions the tokens between the two semantics.
  inputs, noise = _inputs(b=1, n=2, l=64)
  module = SemanticAwareSlotAttention(num_semantics=2, num_instances=3)
  variables, out = _run(module, inputs, noise)
  binary = np.asarray(out["semantic_binary"][0])
  counts = binary.sum(-1)
  sem = int(np.argmax(np.minimum(counts, 64 - counts)))  # semantic with a partial mask
  assert 0 < counts[sem] < 64
  inside = binary[sem].astype(bool)

  def perturbed(where):
    delta = 1e-3 * jax.random.normal(jax.random.PRNGKey(7), inputs.shape)
    return module.apply(variables, inputs + delta * jnp.asarray(where)[None, :, None], noise)

  outside_out = perturbed(~inside)
  # Precondition: the small change did not move the mask itself.
  np.testing.assert_array_equal(outside_out["semantic_binary"][0, sem], binary[sem])
  np.testing.assert_allclose(outside_out["instance_slots"][0, sem],
                             out["instance_slots"][0, sem], rtol=1e-5, atol=1e-6)
  # The other semantic does see those tokens.
  assert np.abs(outside_out["instance_slots"][0, 1 - sem] - out["instance_slots"][0, 1 - sem]).max() > 1e-6
  probs = np.asarray(jax.nn.softmax(out["semantic_logits"][0], axis=0))[sem]
  confident = inside & (probs > 0.6)  # tokens far from the threshold
  assert confident.any()
  inside_out = perturbed(confident)
  np.testing.assert_array_equal(inside_out["semantic_binary"][0, sem], binary[sem])
  assert np.abs(inside_out["instance_slots"][0, sem] - out["instance_slots"][0, sem]).max() > 1e-5


def test_threshold_on_logits_differs_from_threshold_on_probabilities():
  inputs, noise = _inputs()
  prob = SemanticAwareSlotAttention(num_semantics=4, num_instances=3, tau=0.3)
  logit = prob.clone(mask_threshold_on="logit")
  variables, out_prob = _run(prob, inputs, noise)
  _, out_logit = _run(logit, inputs, noise, variables)
  probs = jax.nn.softmax(out_prob["semantic_logits"], axis=1)
  np.testing.assert_array_equal(out_prob["semantic_binary"], probs > 0.3)
  np.testing.assert_array_equal(out_logit["semantic_binary"], out_prob["semantic_logits"] > 0.3)


def test_semantic_only_and_instance_only_stages():
  inputs, noise = _inputs()
  semantic = SemanticAwareSlotAttention(num_semantics=4, num_instances=3, stages="semantic")
  _, out = _run(semantic, inputs, noise)
  assert out["instance_slots"].shape == (2, 4, 1, 16)
  np.testing.assert_array_equal(out["instance_slots"][:, :, 0], out["semantic_slots"])
  instance = SemanticAwareSlotAttention(num_semantics=4, num_instances=3, stages="instance")
  variables, out = _run(instance, inputs, noise)
  np.testing.assert_array_equal(out["semantic_binary"], 1.0)
  np.testing.assert_allclose(out["semantic_slots"][0], variables["params"]["mu"], rtol=1e-6)


def test_single_gaussian_degenerates_to_plain_slot_attention():
  # N = 1 (Ours-D): the only semantic covers every token.
  inputs, noise = _inputs(n=1)
  module = SemanticAwareSlotAttention(num_semantics=1, num_instances=3)
  _, out = _run(module, inputs, noise)
  np.testing.assert_array_equal(out["semantic_binary"], 1.0)


def test_reparameterised_samples_train_mu_and_sigma_but_code_samples_do_not():
  inputs, noise = _inputs()
  for mode, expect_grad in [("reparam", True), ("none", False)]:
    module = SemanticAwareSlotAttention(num_semantics=4, num_instances=3, sample_grad=mode,
                                        stages="instance")
    variables = module.init(jax.random.PRNGKey(0), inputs, noise)
    loss = lambda v: jnp.sum(module.apply(v, inputs, noise)["instance_slots"] ** 2)
    grads = jax.grad(loss)(variables)["params"]
    assert (np.abs(grads["log_sigma"]).max() > 0) == expect_grad


def test_unknown_variant_is_rejected_with_its_name():
  inputs, noise = _inputs()
  with pytest.raises(ValueError, match="slot_update"):
    SemanticAwareSlotAttention(slot_update="lstm").init(jax.random.PRNGKey(0), inputs, noise)
