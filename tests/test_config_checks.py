"""Start-up config checks: every string option and range, before anything is built."""

import importlib
import os
import subprocess
import sys

import pytest

from smtc_jax import config_checks
from smtc_jax.data import pipeline
from smtc_jax.evaluation import discovery, scores

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ["base", "reference", "tiny", "cpu_synthetic", "tpu_v4", "gpu"]

# Every string option and the values it takes.
STRING_OPTIONS = {
    "model.encoder": config_checks.ENCODERS, "model.features": config_checks.FEATURES,
    "model.corr_partner": config_checks.CORR_PARTNERS, "model.fusion": config_checks.FUSIONS,
    "model.correlation": config_checks.CORRELATIONS,
    "model.slot_input": config_checks.SLOT_INPUTS, "model.slot_update": config_checks.SLOT_UPDATES,
    "model.mask_threshold_on": config_checks.MASK_THRESHOLDS, "model.stages": config_checks.STAGES,
    "model.sample_grad": config_checks.SAMPLE_GRADS, "model.dtype": config_checks.DTYPES,
    "model.resnet.feature_stage": config_checks.RESNET_STAGES,
    "loss.sinkhorn_marginals": config_checks.SINKHORN_MARGINALS,
    "loss.instance_form": config_checks.INSTANCE_FORMS, "data.source": config_checks.DATA_SOURCES,
    "data.layout": config_checks.LAYOUTS, "train.ema_scope": config_checks.EMA_SCOPES,
    "init.scope": config_checks.INIT_SCOPES, "eval.unsupervised_matching": config_checks.MATCHINGS,
    "eval.params": config_checks.EVAL_PARAMS, "eval.candidates": discovery.CANDIDATE_RULES,
    "eval.background": discovery.BACKGROUND_RULES, "eval.tracks": discovery.TRACK_RULES,
    "data.clip_sampling": pipeline.CLIP_SAMPLINGS, "eval.protocol": scores.PROTOCOLS,
}


def _config(name="cpu_synthetic"):
  return importlib.import_module(f"configs.{name}").get_config()


def _set(config, field, value):
  *path, last = field.split(".")
  node = config
  for key in path:
    node = node[key]
  node[last] = value


@pytest.mark.parametrize("name", CONFIGS)
def test_every_shipped_config_passes_for_export_and_eval(name):
  assert config_checks.problems(_config(name), "export", "/tmp/w") == []
  assert config_checks.problems(_config(name), "eval", "/tmp/w") == []


def test_training_needs_its_data_path_but_the_embedded_default_runs_as_is():
  assert config_checks.problems(_config("cpu_synthetic"), "train", "/tmp/w") == []
  assert config_checks.problems(_config("tpu_v4"), "train", "/tmp/w") == [
      "data.source='frames' needs data.path (a DAVIS or YouTube-VOS folder)"]


@pytest.mark.parametrize("field", sorted(STRING_OPTIONS))
def test_every_string_option_names_the_field_and_its_allowed_values(field):
  config = _config()
  _set(config, field, "foo")
  found = config_checks.problems(config, "train", "/tmp/w")
  assert found[0] == (f"{field}='foo' is not one of "
                      f"{', '.join(repr(a) for a in STRING_OPTIONS[field])}")


def test_the_allowed_values_are_the_ones_the_configs_use():
  # Each shipped value is allowed (no check stricter than the code).
  for name in CONFIGS:
    config = _config(name)
    for field, allowed in STRING_OPTIONS.items():
      node = config
      for key in field.split("."):
        node = node[key]
      assert node in allowed, (name, field)


@pytest.mark.parametrize("field,value,message", [
    ("model.num_instances", 9, "model.num_instances=9 must lie in [1, 8]"),
    ("model.vit.num_heads", 3, "model.vit.dim=64 is not divisible by model.vit.num_heads=3"),
    ("data.resolution", (60, 64), "data.resolution=(60, 64) must be two multiples of the encoder "
                                  "stride 8"),
    ("eval.discovery_resolution", (128, 100), "eval.discovery_resolution=(128, 100) must be () "
                                              "(the training size) or two multiples of the "
                                              "encoder stride 8"),
    ("train.eval_resolution", (64,), "train.eval_resolution=(64,) must be () "
                                      "(eval.discovery_resolution) or two multiples of the "
                                      "encoder stride 8"),
    ("eval.track_merge_share", 1.5, "eval.track_merge_share=1.5 must lie in [0.0, 1.0]"),
    ("eval.track_gap_radius", -0.1, "eval.track_gap_radius=-0.1 must lie in [0.0, 0.5]"),
    ("train.checkpoint_every", 0, "train.checkpoint_every=0 must be >= 1"),
    ("train.ema_momentum", 1.5, "train.ema_momentum=1.5 must lie in [0.0, 1.0]"),
    ("data.augment.crop_scale", (0.9, 0.5), "data.augment.crop_scale=(0.9, 0.5) must be (a, b) "
                                            "with 0.0 < a <= b <= 1.0"),
    ("optim.learning_rate", 0.0, "optim.learning_rate=0.0 must be > 0.0"),
    ("loss.teacher_temperature", 0.0, "loss.teacher_temperature=0.0 must be > 0.0"),
    ("data.synthetic.num_frames", 3, "data.synthetic.num_frames=3 is below data.num_frames=4: "
                                     "no synthetic video could give a clip"),
    ("data.synthetic.lighting", 1.5, "data.synthetic.lighting=1.5 must lie in [0.0, 1.0]"),
    ("data.synthetic.noise", -2.0, "data.synthetic.noise=-2.0 must be >= 0.0"),
    ("init.checkpoint", "/nowhere/dino", "init.checkpoint='/nowhere/dino' is not a folder"),
    # Proposals are 8-bit label maps: id 256 would wrap to 0 (background).
    ("eval.max_proposals", 256, "eval.max_proposals=256 must lie in [1, 255] (proposals are "
                                "8-bit label maps)"),
    ("data.num_frames", 1, "data.num_frames=1 must be >= 2 in training (L_sem and L_obj compare "
                           "a clip's frames)"),
    ("data.augment.jitter", (0.4, 0.4, 0.4), "data.augment.jitter=(0.4, 0.4, 0.4) must be 4 "
                                             "values (brightness, contrast, saturation, hue), "
                                             "each in [0.0, 1.0]"),
    ("data.mean", (0.5, 0.5), "data.mean=(0.5, 0.5) must be 3 values (R, G, B), each in "
                              "[0.0, 1.0]"),
    ("data.std", (0.2, 0.0, 0.2), "data.std=(0.2, 0.0, 0.2) must be 3 values (R, G, B), each "
                                  "in (0.0, inf)"),
    ("data.augment.blur_kernel_frac", 1.5, "data.augment.blur_kernel_frac=1.5 must lie in "
                                           "[0.0, 1.0]"),
])
def test_numbers_and_paths_out_of_range_are_named(field, value, message):
  config = _config()
  _set(config, field, value)
  assert config_checks.problems(config, "train", "/tmp/w") == [message]


def test_authors_protocol_names_a_model_with_more_candidates_than_their_tool_takes():
  config = _config()
  config.eval.protocol = "authors"
  assert config_checks.problems(config, "eval", "/tmp/w") == []
  config.model.num_semantics, config.model.num_instances = 76, 4
  assert config_checks.problems(config, "eval", "/tmp/w") == [
      "eval.protocol='authors' scores at most 300 candidates per frame; model.num_semantics x "
      "model.num_instances = 304"]


def test_eval_reads_no_init_checkpoint_and_does_not_need_one():
  config = _config()
  config.init.checkpoint = "/nowhere/dino"
  assert config_checks.problems(config, "eval", "/tmp/w") == []
  config.data.num_frames = 1  # a clip length for evaluation, not for training
  assert config_checks.problems(config, "eval", "/tmp/w") == []


def test_combinations_the_code_cannot_run_are_named():
  config = _config()
  config.model.stages = "instance"
  config.model.encoder = "resnet"
  config.model.features = "last_keys"
  assert config_checks.problems(config, "train", "/tmp/w") == [
      "model.features='last_keys' needs model.encoder='vit', got 'resnet'",
      "model.stages='instance' has no semantic masks: set loss.sem_weight and loss.reg_weight "
      "to 0"]


def test_mode_and_workdir_requirements():
  config = _config()
  config.eval.benchmark = "davis2017"
  # The in-training watch reads the named benchmark too: its folder is checked
  # at start-up, not at the first evaluation; without a watch it is not needed.
  assert config_checks.problems(config, "train", "/tmp/w") == [
      "eval.benchmark='davis2017' needs eval.data_path (the benchmark's folder, which the watch "
      "reads every train.eval_every steps)"]
  config.eval.data_path = "/no/such/davis"
  assert config_checks.problems(config, "train", "/tmp/w") == [
      "eval.data_path='/no/such/davis' is not a folder"]
  config.eval.data_path = ""
  config.train.eval_every = 0
  assert config_checks.problems(config, "train", "/tmp/w") == []
  config.eval.benchmark, config.train.eval_every = "jhmdb", 250  # nothing for the watch to score
  assert config_checks.problems(config, "train", "/tmp/w") == []
  config.eval.benchmark = "davis2017"
  assert config_checks.problems(config, "eval", "/tmp/w") == [
      "eval.benchmark='davis2017' needs eval.data_path (the benchmark's folder)"]
  assert config_checks.problems(_config(), "train", "gs://bucket/run") == [
      "workdir gs://bucket/run is remote: data.source='synthetic' needs a local data.path"]


@pytest.mark.parametrize("mode", ["train", "eval", "export"])
def test_a_workdir_or_logdir_that_cannot_be_a_folder_is_named(tmp_path, mode):
  (tmp_path / "file").write_text("")
  config = _config()
  assert config_checks.problems(config, mode, str(tmp_path / "file")) == [
      f"workdir {tmp_path / 'file'} is not a folder"]
  assert config_checks.problems(config, mode, str(tmp_path / "file" / "run")) == [
      f"workdir {tmp_path / 'file' / 'run'} cannot be made: {tmp_path / 'file'} is not a folder"]
  config.train.logdir = str(tmp_path / "file" / "logs")
  assert config_checks.problems(config, mode, str(tmp_path / "new" / "run")) == [
      f"train.logdir={config.train.logdir!r} cannot be made: {tmp_path / 'file'} is not a folder"]


def test_the_tfds_source_without_tensorflow_datasets_says_how_to_install_it(monkeypatch):
  config = _config()
  config.data.source = "tfds"
  assert config_checks.problems(config, "train", "/tmp/w") == []  # dev installs TFDS
  monkeypatch.setattr(config_checks.importlib.util, "find_spec",
                      lambda name: None if name == "tensorflow_datasets" else object())
  assert config_checks.problems(config, "train", "/tmp/w") == [
      "data.source='tfds' needs tensorflow-datasets: pip install -e '.[tfds]'"]


def test_a_bad_option_stops_main_before_anything_is_built_or_written(tmp_path):
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "smtc_jax.main", "--config", os.path.join(REPO, "configs/cpu_synthetic.py"),
       "--workdir", str(workdir), "--config.model.fusion=foo", "--config.train.log_every=0"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  assert proc.stderr.splitlines() == [
      "error: model.fusion='foo' is not one of 'paper', 'reference'",
      "error: train.log_every=0 must be >= 1"]
  assert proc.stdout == ""
  assert not workdir.exists()  # no synthetic set, no config.json, no lock
