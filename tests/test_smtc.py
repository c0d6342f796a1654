import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base, reference
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


@pytest.mark.parametrize("variant", [
    {}, {"model.stages": "semantic"}, {"model.stages": "instance"},
    {"model.num_semantics": 1}, {"model.slot_input": "rgb"},
    {"model.slot_input": "correlation"}, {"model.features": "last_keys"},
    {"model.slot_update": "residual"}, {"model.fusion": "reference"},
    {"model.corr_partner": "previous"}, {"model.detach_trick": True},
])
def test_every_ablation_switch_builds_and_runs(tiny_config, variant):
  for key, value in variant.items():
    section, field = key.split(".")
    tiny_config[section][field] = value
  clip = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 32, 32, 3))
  _, _, out = _forward(tiny_config, clip)
  n = tiny_config.model.num_semantics
  p = 1 if tiny_config.model.stages == "semantic" else tiny_config.model.num_instances
  assert {k: tuple(v.shape) for k, v in out.items()} == _expected_shapes(2, 3, n, p, 16, 32)
  np.testing.assert_allclose(jnp.linalg.norm(out["objects"], axis=-1), 1.0, rtol=1e-5)


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
