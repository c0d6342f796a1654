import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base, reference, tiny
from smtc_jax.models import smtc
from tests.conftest import model_rngs


def _forward(config, clip, seed=0):
  model = smtc.build_model(config)
  rngs = model_rngs(seed)
  variables = jax.jit(model.init)(rngs, clip)
  out = jax.jit(model.apply)(variables, clip, rngs=rngs)
  return model, variables, out


def _expected_shapes(b, t, n, p, l, d):
  return {
      "features": (b, t, l, d),
      "semantic_logits": (b, t, n, l), "semantic_masks": (b, t, n, l),
      "semantic_binary": (b, t, n, l), "semantic_slots": (b, t, n, d),
      "instance_logits": (b, t, n, p, l), "instance_masks": (b, t, n, p, l),
      "object_masks": (b, t, n, p, l), "instance_slots": (b, t, n, p, d),
      "objects": (b, t, n, p, d),
  }


@pytest.mark.slow
def test_paper_configuration_forward_on_cpu_has_the_expected_shapes():
  config = base.get_config()  # ViT-S/16, 256x256, T=4, N=16, P=4
  clip = jax.random.normal(jax.random.PRNGKey(0), (1, 4, 256, 256, 3))
  _, variables, out = _forward(config, clip)
  shapes = {k: tuple(v.shape) for k, v in out.items()}
  assert shapes == _expected_shapes(1, 4, 16, 4, 256, 384)
  count = sum(x.size for x in jax.tree.leaves(variables["params"]["encoder"]))
  print(f"ViT-S/16 encoder parameters: {count / 1e6:.2f}M")
  assert abs(count - 21.7e6) <= 0.1e6
  assert all(np.isfinite(np.asarray(v)).all() for v in out.values())


RNGS = smtc.model_rngs(jax.random.PRNGKey(1))  # fixed draws: partners and instance noise
CAPTURED = ("encode", "random_partner", "fuse")  # SMTC methods whose outputs _run returns


def _tiny(**switches):
  config = tiny.get_config()
  for field, value in switches.items():
    config.model[field] = value
  return config


@pytest.fixture(scope="module")
def shared():
  """One init of the tiny model with every head (fusion='paper', slot_input='fused') and its
  clip (B=2, T=3): the switch tests apply these variables eagerly, so no model compiles."""
  clip = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 32, 32, 3))
  variables = smtc.build_model(_tiny()).init({"params": jax.random.PRNGKey(0), **RNGS}, clip)
  return variables, clip


def _run(shared, **switches):
  """The tiny model with model.<switch> set, applied to the shared variables (heads it does
  not build are ignored): (model, outputs, what its CAPTURED methods returned)."""
  variables, clip = shared
  model = smtc.build_model(_tiny(**switches))
  out, state = model.apply(variables, clip, rngs=RNGS,
                           capture_intermediates=lambda _, method: method in CAPTURED)
  return model, out, {name: value[0] for name, value in state["intermediates"].items()}


@pytest.mark.parametrize("stages", ["both", "semantic", "instance"])
def test_every_output_has_its_shape_and_objects_are_unit_vectors(shared, stages):
  _, out, _ = _run(shared, stages=stages)
  p = 1 if stages == "semantic" else 3  # Ours-B: one instance per semantic, itself
  assert {k: tuple(v.shape) for k, v in out.items()} == _expected_shapes(2, 3, 4, p, 16, 32)
  np.testing.assert_allclose(jnp.linalg.norm(out["objects"], axis=-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("fusion,slot_input", [
    ("paper", "fused"), ("reference", "fused"), ("paper", "rgb"), ("reference", "rgb"),
    ("paper", "correlation")])
def test_fusion_and_slot_input_build_their_heads_and_feed_their_sum(shared, fusion, slot_input):
  model, out, seen = _run(shared, fusion=fusion, slot_input=slot_input)
  built = jax.eval_shape(model.init, {"params": jax.random.PRNGKey(0), **RNGS}, shared[1])
  heads = {"h_f": fusion == "paper" and slot_input != "correlation", "h_c": slot_input != "rgb"}
  assert {"h_f", "h_c"} & set(built["params"]) == {head for head, wanted in heads.items() if wanted}
  # Eq. 2-3 by hand: the token grid (4 x 4) is the correlation grid, so no resize.
  params = shared[0]["params"]
  dense = lambda name, x: x @ params[name]["kernel"] + params[name]["bias"]
  feats, partner = out["features"], seen["random_partner"]
  corr = jnp.einsum("btld,btgd->btlg", feats, feats[jnp.arange(2)[:, None], partner])  # C_tj
  rgb = dense("h_f", feats) if fusion == "paper" else feats  # reference: h_f is the identity
  expected = {"fused": rgb + dense("h_c", corr), "rgb": rgb,
              "correlation": dense("h_c", corr)}[slot_input]
  np.testing.assert_allclose(seen["fuse"], expected, rtol=1e-5, atol=1e-4)
  # What slot attention reads is that sum (stage 1 draws no noise).
  stage1 = model.slot_attention.apply({"params": params["slot_attention"]},
                                      seen["fuse"].reshape(6, 16, 32), jnp.zeros((6, 4, 3, 32)))
  np.testing.assert_allclose(out["semantic_logits"].reshape(6, 4, 16), stage1["semantic_logits"],
                             rtol=1e-5, atol=1e-5)


def test_previous_partner_pairs_each_frame_with_the_one_before(shared):
  _, previous, seen_previous = _run(shared, corr_partner="previous")
  model, random, seen_random = _run(shared, corr_partner="random")
  np.testing.assert_array_equal(seen_previous["random_partner"], [[2, 0, 1]] * 2)  # 0 pairs with 2
  # 'random' draws its partners from the 'partner' stream, and with these rngs another pairing.
  _, drawn = model.apply({}, 2, 3, 32, rngs=RNGS, method=smtc.SMTC.random_inputs)
  np.testing.assert_array_equal(seen_random["random_partner"], drawn)
  assert (drawn != jnp.arange(3)).all() and (drawn != seen_previous["random_partner"]).any()
  assert np.abs(previous["semantic_slots"] - random["semantic_slots"]).max() > 1e-4


def test_features_feed_the_encoder_output_they_name(shared):
  variables, clip = shared
  model = smtc.build_model(_tiny())
  encoded = model.encoder.apply({"params": variables["params"]["encoder"]},
                                clip.reshape(6, 32, 32, 3))
  for features, key, other in [("tokens", "tokens", "keys"), ("last_keys", "keys", "tokens")]:
    # reference fusion of the RGB term alone: slot attention reads F itself
    _, out, seen = _run(shared, features=features, fusion="reference", slot_input="rgb")
    np.testing.assert_allclose(seen["fuse"], encoded[key].reshape(2, 3, 16, 32),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out["features"], seen["fuse"], rtol=1e-6, atol=1e-6)
    assert np.abs(seen["fuse"] - encoded[other].reshape(2, 3, 16, 32)).max() > 1e-2


def _slot_inputs(b=2):
  keys = jax.random.split(jax.random.PRNGKey(5), 2)
  return jax.random.normal(keys[0], (b, 16, 32)), jax.random.normal(keys[1], (b, 4, 3, 32))


def test_residual_update_builds_no_gru_and_adds_each_read_out(shared):
  params = shared[0]["params"]["slot_attention"]  # built with the GRU
  residual = smtc.build_model(_tiny(slot_update="residual")).slot_attention
  inputs, noise = _slot_inputs()
  built = jax.eval_shape(residual.init, jax.random.PRNGKey(0), inputs, noise)["params"]
  assert "gru" in params and set(built) == set(params) - {"gru"}
  # Values all c and the slot MLP's output 0: the read-out of every iteration is c, so the
  # residual update leaves mu + iterations * c; the GRU does not.
  c = jax.random.normal(jax.random.PRNGKey(6), (32,))
  zero = lambda tree: jax.tree.map(jnp.zeros_like, tree)
  params = {**params, "project_v": {"kernel": zero(params["project_v"]["kernel"]), "bias": c},
            "mlp": {**params["mlp"], "fc2": zero(params["mlp"]["fc2"])}}
  expected = params["mu"] + residual.num_iterations * c
  out = residual.apply({"params": params}, inputs, noise)
  np.testing.assert_allclose(out["semantic_slots"], jnp.broadcast_to(expected, (2, 4, 32)),
                             rtol=1e-5, atol=1e-5)
  gru = smtc.build_model(_tiny()).slot_attention
  gru_slots = gru.apply({"params": params}, inputs, noise)["semantic_slots"]
  assert np.abs(gru_slots - expected).max() > 0.1


def test_detach_trick_changes_the_gradients_not_the_forward(shared):
  params = shared[0]["params"]["slot_attention"]
  trick = smtc.build_model(_tiny(detach_trick=True, stages="semantic")).slot_attention
  plain = trick.clone(detach_trick=False)
  inputs, noise = _slot_inputs(b=1)
  weights = jax.random.normal(jax.random.PRNGKey(7), (1, 4, 32))
  slots = lambda module, p: module.apply({"params": p}, inputs, noise)["semantic_slots"]
  loss = lambda module, p: jnp.sum(weights * slots(module, p))
  np.testing.assert_allclose(loss(trick, params), loss(plain, params), rtol=1e-5)
  grads = jax.grad(lambda p: loss(trick, p))(params)
  # With the trick only the last iteration passes gradients, from where the others left the
  # slots, plus a straight path to mu: one iteration started there has the same gradients.
  k = trick.num_iterations
  before_last = plain.clone(num_iterations=k - 1).apply({"params": params}, inputs, noise)
  last = plain.clone(num_iterations=1)
  expected = jax.grad(lambda p: loss(last, p))({**params, "mu": before_last["semantic_slots"][0]})
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), grads, expected)
  full = jax.grad(lambda p: loss(plain, p))(params)
  assert np.abs(full["project_k"]["kernel"] - grads["project_k"]["kernel"]).max() > 1e-4


@pytest.mark.parametrize("field,value", [
    ("mask_threshold_on", "logit"), ("stages", "instance"), ("sample_grad", "none")])
def test_slot_attention_switches_reach_the_module(field, value):
  # What the module does with each: tests/test_slot_attention.py.
  assert getattr(smtc.build_model(_tiny(**{field: value})).slot_attention, field) == value


def test_reference_config_runs_at_tiny_size(tiny_config):
  config = reference.get_config()
  config.model.vit = tiny_config.model.vit
  config.model.num_semantics, config.model.num_instances = 4, 3
  config.data.resolution = (32, 32)
  clip = jax.random.normal(jax.random.PRNGKey(0), (1, 2, 32, 32, 3))
  _, variables, out = _forward(config, clip)
  assert "h_f" not in variables["params"]  # identity fusion
  assert out["semantic_logits"].shape == (1, 2, 4, 16)


def test_partner_frames_differ_from_the_frame_itself():
  random = smtc.partner_indices(jax.random.PRNGKey(0), 64, 4, "random")
  assert (random != jnp.arange(4)[None]).all()
  assert set(np.unique(random).tolist()) == {0, 1, 2, 3}
  previous = smtc.partner_indices(None, 2, 4, "previous")
  np.testing.assert_array_equal(previous, [[3, 0, 1, 2]] * 2)


def test_correlation_reads_the_partner_frame(tiny_config):
  tiny_config.model.slot_input = "correlation"
  clip = jax.random.normal(jax.random.PRNGKey(0), (1, 3, 32, 32, 3))
  model, variables, _ = _forward(tiny_config, clip)
  noise = jnp.zeros((1, 3, 4, 3, 32))
  run = lambda c, partner: model.apply(variables, c, instance_noise=noise, partner=partner)
  partner = jnp.array([[1, 2, 0]])
  base_out = run(clip, partner)
  changed = clip.at[:, 2].multiply(-1.0)  # frame 2 is only frame 1's partner
  out = run(changed, partner)
  assert np.abs(out["semantic_slots"][0, 1] - base_out["semantic_slots"][0, 1]).max() > 1e-5
  np.testing.assert_allclose(out["semantic_slots"][0, 0], base_out["semantic_slots"][0, 0], atol=1e-6)


def test_model_runs_at_a_larger_evaluation_resolution(tiny_config):
  # h_c expects the training grid; partner features are resized to it.
  clip = jax.random.normal(jax.random.PRNGKey(0), (1, 2, 32, 32, 3))
  model, variables, _ = _forward(tiny_config, clip)
  big = jax.random.normal(jax.random.PRNGKey(1), (1, 2, 48, 64, 3))
  out = model.apply(variables, big, rngs=model_rngs(1))
  assert out["semantic_masks"].shape == (1, 2, 4, 48)


def test_random_inputs_are_the_draws_a_call_makes(tiny_config):
  # The train step draws them for its whole batch and splits them with it.
  clip = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 32, 32, 3))
  model, variables, _ = _forward(tiny_config, clip)
  d = smtc.feature_dim(tiny_config)

  def both(variables, clip):  # one jit, so that XLA fuses both alike
    drawn = model.apply(variables, clip, rngs=model_rngs(3))
    noise, partner = model.apply({}, 2, 3, d, rngs=model_rngs(3), method=smtc.SMTC.random_inputs)
    return drawn, model.apply(variables, clip, instance_noise=noise, partner=partner), noise

  drawn, given, noise = jax.jit(both)(variables, clip)
  assert noise.shape == (2, 3, 4, 3, 32)
  jax.tree.map(np.testing.assert_array_equal, given, drawn)


@pytest.mark.parametrize("encoder", ["vit", "resnet"])
def test_feature_dim_is_the_width_of_the_encoder_features(tiny_config, encoder):
  tiny_config.model.encoder = encoder
  tiny_config.model.resnet.stage_blocks = (1, 1, 1, 1)
  tiny_config.model.resnet.feature_stage = "res3"
  tiny_config.data.resolution = (64, 64)
  model = smtc.build_model(tiny_config)
  clip = jax.ShapeDtypeStruct((1, 2, 64, 64, 3), jnp.float32)
  out, _ = jax.eval_shape(model.init_with_output, model_rngs(0), clip)
  assert out["features"].shape[-1] == smtc.feature_dim(tiny_config) == (
      32 if encoder == "vit" else 512)


def test_a_dinov2_layout_encoder_at_stride_14_runs_through_discovery_and_propagation():
  # DINOv2's additions (LayerScale, registers) at toy sizes and the patch 14 of
  # configs/dinov2.py: the registers leave the grid, everything after reads 14-px cells.
  from smtc_jax.evaluation import predictor
  config = tiny.get_config()
  v = config.model.vit
  v.patch_size, v.pretrain_grid, v.layer_scale, v.num_registers = 14, 3, True, 2
  config.data.resolution = (42, 56)
  config.eval.prop_video_len = 2
  model = smtc.build_model(config)
  assert model.corr_grid == (3, 4) and smtc.encoder_stride(config) == 14
  clip = jax.random.normal(jax.random.PRNGKey(0), (1, 3, 42, 56, 3))
  _, variables, out = _forward(config, clip)
  assert {k: tuple(v.shape) for k, v in out.items()} == _expected_shapes(1, 3, 4, 3, 12, 32)
  method = predictor.Predictor(config)
  frames = np.random.default_rng(0).integers(0, 255, (4, 50, 75, 3), np.uint8)
  proposals, _ = method.proposals(variables, frames)
  assert proposals.shape == (4, 50, 75)
  assert method.feature_size((50, 75)) == (42, 70)  # cut to multiples of 14
  labels = np.zeros((50, 75), np.uint8)
  labels[10:40, 20:60] = 1
  propagated = predictor.propagate_masks(method, variables, frames, labels, 2)
  assert propagated.shape == (4, 50, 75) and propagated[0].max() == 1
