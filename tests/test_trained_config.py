"""The config travels with the weights: every checkpoint and export holds the
config it was trained under; eval and export refuse weights of another model
config, a resume refuses another training config, and the workdir's earlier
config files are kept."""

import json
import os

import grain
import jax
import numpy as np
import pytest

from configs import tiny
from smtc_jax import checkpoint, export, pretrain, run_config, train
from smtc_jax.evaluation import predictor
from smtc_jax.models import smtc
from smtc_jax.training import loop
from tests.test_faults import _damage_arrays

# The in-process restore of a damaged checkpoint leaves TensorStore callbacks
# that find Orbax's asyncio loop closed.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _config():
  config = tiny.get_config()
  config.train.async_checkpoints = False
  return config


@pytest.fixture(scope="module")
def params():
  """Random parameters of the tiny model's shapes (no initialisation compiled)."""
  config = _config()
  shapes = smtc.abstract_variables(config, smtc.build_model(config))["params"]
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), shapes)


def _weights(params, step: int, shift: float = 0.0):
  shifted = jax.tree.map(lambda p: p + shift, params)
  return {"params": shifted, "ema_params": params, "step": np.asarray(step, np.int32)}


def _save(workdir, config, tree, folder=""):
  """A checkpoint at tree's step as the training loop writes it (with a data
  iterator and the config)."""
  manager = checkpoint.make_manager(os.path.join(str(workdir), folder), config)
  data_iter = iter(grain.MapDataset.range(4).to_iter_dataset())
  checkpoint.save(manager, int(tree["step"]), tree, data_iter, config)
  manager.wait_until_finished()
  manager.close()


def _changed(config, field: str, value):
  before = run_config.plain(config)
  *path, last = field.split(".")
  node = config
  for key in path:
    node = node[key]
  node[last] = value
  assert run_config.plain(config) != before
  return config


def test_every_checkpoint_and_export_carries_the_config_it_was_trained_under(params, tmp_path):
  config = _config()
  _save(tmp_path, config, _weights(params, 4))
  assert checkpoint.stored_config(tmp_path / "checkpoints" / "4") == run_config.plain(config)
  evaluated = _changed(_config(), "eval.max_videos", 3)  # eval fields are no model's
  export.run(evaluated, str(tmp_path), None)
  # The export holds the config the weights were trained under, not the one that exported them.
  assert checkpoint.stored_config(tmp_path / "export") == run_config.plain(config)


MODEL_CHANGES = [("model.fusion", "reference"), ("model.tau", 0.3),
                 ("model.corr_partner", "previous"), ("model.features", "last_keys"),
                 ("model.num_instances", 4), ("data.mean", (0.5, 0.5, 0.5))]


@pytest.mark.parametrize("field,value", MODEL_CHANGES)
def test_eval_and_export_refuse_weights_trained_under_another_model_config(
    params, tmp_path, field, value):
  trained = _config()
  _save(tmp_path, trained, _weights(params, 4))
  config = _changed(_config(), field, value)
  before = run_config.flat(run_config.plain(trained))[field]
  for read in (lambda: predictor.trained_variables(config, str(tmp_path)),
               lambda: export.run(config, str(tmp_path), None)):
    with pytest.raises(run_config.ConfigMismatch) as refused:
      read()
    line = str(refused.value)
    assert "\n" not in line
    given = json.loads(json.dumps(value))  # as stored: tuples are lists
    assert f"{field}: trained {before!r}, given {given!r}" in line
    assert str(tmp_path / "checkpoints" / "4") in line  # where its config is
  assert not os.path.exists(tmp_path / "export")
  # The same refusal for an export alone.
  checkpoint.export_params_tree(_weights(params, 4), str(tmp_path / "only" / "export"), trained)
  with pytest.raises(run_config.ConfigMismatch, match=field.replace(".", r"\.")):
    predictor.trained_variables(config, str(tmp_path / "only"))


def test_fields_outside_the_model_do_not_stop_evaluation(params, tmp_path):
  _save(tmp_path, _config(), _weights(params, 4))
  config = _config()
  config.model.dtype = "bfloat16"  # precision, not the weights
  config.loss.sem_weight, config.eval.max_videos, config.train.num_steps = 0.5, 2, 99
  _, weights = predictor.trained_variables(config, str(tmp_path))
  assert (weights.source, weights.step) == ("checkpoint", 4)


def test_weights_trained_under_one_attention_implementation_evaluate_and_resume_under_another(
    params, tmp_path):
  _save(tmp_path, _config(), _weights(params, 4))
  config = _changed(_config(), "model.vit.attention", "xla")  # e.g. trained with cuDNN on a GPU
  config.model.vit.attention_pad, config.model.vit.attention_block = 32, 8
  _, weights = predictor.trained_variables(config, str(tmp_path))
  assert (weights.source, weights.step) == ("checkpoint", 4)
  changes = checkpoint.check_resume(os.path.join(str(tmp_path), checkpoint.CHECKPOINT_DIR), config)
  assert changes == [f"model.vit.{f}={getattr(_config().model.vit, f)!r} -> {v!r}"
                     for f, v in (("attention", "xla"), ("attention_block", 8),
                                  ("attention_pad", 32))]


def test_eval_reads_the_newest_readable_weights_and_names_them(params, tmp_path):
  config = _config()
  for step in (4, 6):
    _save(tmp_path, config, _weights(params, step, shift=step))
  _damage_arrays(tmp_path / "checkpoints" / "6", "flip")
  checkpoint.export_params_tree(_weights(params, 5, shift=5.0), str(tmp_path / "export"), config)
  variables, weights = predictor.trained_variables(config, str(tmp_path))
  assert weights == predictor.Weights("export", 5, str(tmp_path / "export"))
  mu = variables["params"]["slot_attention"]["mu"]
  np.testing.assert_array_equal(mu, params["slot_attention"]["mu"] + 5.0)
  # An export older than the newest readable checkpoint: the checkpoint, named by its step.
  os.rename(tmp_path / "export", tmp_path / "newer_export")
  checkpoint.export_params_tree(_weights(params, 3), str(tmp_path / "export"), config)
  _, weights = predictor.trained_variables(config, str(tmp_path))
  assert weights == predictor.Weights("checkpoint", 4, str(tmp_path / "checkpoints" / "4"))


RESUME_REFUSED = [("loss.sem_weight", 0.5), ("model.fusion", "reference"), ("seed", 7),
                  ("data.batch_size", 4)]


@pytest.mark.parametrize("field,value", RESUME_REFUSED)
def test_a_resume_under_another_config_is_refused_and_config_json_kept(
    params, tmp_path, field, value):
  trained = _config()
  _save(tmp_path, trained, _weights(params, 4))
  loop.save_config(trained, str(tmp_path))
  first = (tmp_path / "config.json").read_text()
  config = _changed(_config(), field, value)
  with pytest.raises(run_config.ConfigMismatch, match=field.replace(".", r"\.")) as refused:
    train.train_and_evaluate(config, str(tmp_path))
  assert str(tmp_path / "checkpoints" / "4") in str(refused.value)
  assert (tmp_path / "config.json").read_text() == first  # what the error points to stays
  assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "config.json"]


def test_a_pretrain_resume_under_another_config_is_refused(params, tmp_path):
  trained = _config()
  trained.pretrain.num_steps = 4
  _save(tmp_path, trained, _weights(params, 2), folder=pretrain.PRETRAIN_DIR)
  config = _changed(_config(), "pretrain.temperature", 0.5)
  config.pretrain.num_steps = 4
  with pytest.raises(run_config.ConfigMismatch, match=r"pretrain\.temperature"):
    pretrain.run(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "config.json")


def test_a_pretrained_encoder_is_reused_only_under_the_fields_it_was_made_with(params, tmp_path):
  made = _config()
  made.pretrain.num_steps = 4
  out = pretrain.export_dir(str(tmp_path))
  checkpoint.export_params_tree({"params": params}, out, made)
  config = _changed(_config(), "model.num_instances", 4)  # SMTC's heads: not pretraining's
  config.pretrain.num_steps = 4
  assert pretrain.run(config, str(tmp_path)) == out
  for field, value in (("pretrain.num_steps", 8), ("model.vit.depth", 3), ("data.gap", 2)):
    with pytest.raises(run_config.ConfigMismatch, match=field.replace(".", r"\.")):
      pretrain.run(_changed(made.copy_and_resolve_references(), field, value), str(tmp_path))


def test_fields_that_may_change_on_resume_are_named_and_earlier_configs_kept(params, tmp_path):
  trained = _config()
  _save(tmp_path, trained, _weights(params, 4))
  config = _changed(_config(), "train.num_steps", 12)
  config.train.log_every = 3
  changes = checkpoint.check_resume(os.path.join(str(tmp_path), checkpoint.CHECKPOINT_DIR), config)
  assert changes == [f"train.log_every={trained.train.log_every} -> 3",
                     f"train.num_steps={trained.train.num_steps} -> 12"]
  paths = [loop.save_config(c, str(tmp_path)) for c in (trained, config, trained, config)]
  assert [os.path.basename(p) for p in paths] == ["config.json", "config.1.json", "config.json",
                                                  "config.1.json"]
  assert json.loads((tmp_path / "config.json").read_text()) == run_config.plain(trained)
  assert json.loads((tmp_path / "config.1.json").read_text()) == run_config.plain(config)
