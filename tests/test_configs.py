import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smtc_jax import checkpoint, sharding
from smtc_jax.data import pipeline
from smtc_jax.models import smtc
from smtc_jax.training import state as state_lib

CONFIGS = ["base", "reference", "tiny", "cpu_synthetic", "tpu_v4", "gpu", "dinov2"]


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_builds_its_model(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  model = smtc.build_model(config)
  d = config.data
  clip = jax.ShapeDtypeStruct((1, d.num_frames, *d.resolution, 3), jnp.float32)
  rngs = {k: jax.random.PRNGKey(0) for k in ("params", "instance", "partner")}
  out = jax.eval_shape(model.init, rngs, clip)
  assert "encoder" in out["params"]


def test_paper_constants_are_the_defaults():
  config = importlib.import_module("configs.base").get_config()
  m, l = config.model, config.loss
  assert (m.num_semantics, m.num_instances, m.num_iterations, m.tau) == (16, 4, 3, 0.5)
  assert (l.tau1, l.tau2, l.sinkhorn_epsilon) == (0.2, 0.5, 0.05)
  assert config.train.ema_momentum == 0.999
  assert (config.data.num_frames, tuple(config.data.resolution)) == (4, (256, 256))
  assert (config.optim.learning_rate, config.data.batch_size) == (2e-4, 128)


@pytest.mark.parametrize("scope", ["encoder", "all"])
def test_exported_params_initialise_a_new_run(tmp_path, scope):
  config = importlib.import_module("configs.tiny").get_config()
  mesh = sharding.make_mesh()
  model = smtc.build_model(config)
  optimizer = state_lib.make_optimizer(config)
  state, _ = state_lib.create_state(config, model, optimizer, mesh)
  checkpoint.export_params(state, str(tmp_path / "export"))
  with pytest.raises(FileExistsError):
    checkpoint.export_params(state, str(tmp_path / "export"))
  config.seed = 1
  config.init.checkpoint = str(tmp_path / "export")
  config.init.scope = scope
  other, _ = state_lib.create_state(config, model, optimizer, mesh)
  np.testing.assert_array_equal(other.params["encoder"]["pos_embed"],
                                state.params["encoder"]["pos_embed"])
  np.testing.assert_array_equal(other.ema_params["encoder"]["norm"]["scale"],
                                state.params["encoder"]["norm"]["scale"])
  same_mu = np.array_equal(other.params["slot_attention"]["mu"], state.params["slot_attention"]["mu"])
  assert same_mu == (scope == "all")


def test_init_checkpoint_with_the_wrong_shapes_is_rejected_by_name(tmp_path):
  config = importlib.import_module("configs.tiny").get_config()
  mesh = sharding.make_mesh()
  model = smtc.build_model(config)
  state, _ = state_lib.create_state(config, model, state_lib.make_optimizer(config), mesh)
  checkpoint.export_params(state, str(tmp_path / "export"))
  config.model.vit.dim = 48
  config.model.vit.num_heads = 4
  config.init.checkpoint = str(tmp_path / "export")
  bigger = smtc.build_model(config)
  with pytest.raises(ValueError, match="wrong shapes"):
    state_lib.create_state(config, bigger, state_lib.make_optimizer(config), mesh)


def test_reference_config_selects_the_authors_training_recipe():
  config = importlib.import_module("configs.reference").get_config()
  o = config.optim
  # start_twostage.sh: lr 2e-5 for 32 clips on each of 4 processes, 10000 steps; the
  # linear rule of Sec. 4.2 keeps lr / global batch at theirs for another batch.
  assert o.learning_rate / config.data.batch_size == pytest.approx(2e-5 / 128)
  assert config.train.num_steps == 10000
  # train.py: encoder groups at lr x 0 for 3000 steps, then x 0.01.
  assert state_lib.encoder_trained_from(config) == 3000
  ratio = state_lib.encoder_learning_rate(config)(3000) / state_lib.learning_rate(config)(3000)
  assert float(ratio) == pytest.approx(0.01)
  assert config.train.ema_scope == "non_encoder" and config.model.vit.drop_path_rate == 0.1
  spec = pipeline.ClipSpec.from_config(config.data)
  assert not spec.random_crop and spec.hflip_prob == 0 and spec.gray_before_jitter
  assert spec.hue_space == "hsv" and spec.clip_sampling == "reference"
  assert config.loss.valid_strict  # train.py's strict > in filter_valid_instance
  assert tuple(config.data.mean) == (0.485, 0.456, 0.406)  # ImageNet in their training


def test_unknown_hue_space_is_named():
  config = importlib.import_module("configs.tiny").get_config()
  config.data.augment.hue_space = "lab"
  with pytest.raises(ValueError, match="data.augment.hue_space must be one of"):
    pipeline.ClipSpec.from_config(config.data)


def _flat(tree, prefix=""):
  if isinstance(tree, dict):
    return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
  return {prefix[:-1]: tree}


def test_gpu_config_is_the_tpu_v4_run_in_micro_batches():
  # The same experiment: only memory (micro-batches) and host decoding differ.
  tpu = _flat(importlib.import_module("configs.tpu_v4").get_config().to_dict())
  gpu = _flat(importlib.import_module("configs.gpu").get_config().to_dict())
  assert {k for k in tpu if tpu[k] != gpu[k]} == {"train.microbatch", "data.num_workers"}
  assert gpu["data.batch_size"] == 128 and gpu["optim.learning_rate"] == 2e-4
