"""Start-up config checks: every string option and range, before anything is built."""

import importlib
import os
import re
import subprocess
import sys

import pytest

from configs import base
from smtc_jax import config_checks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ["base", "reference", "tiny", "cpu_synthetic", "tpu_v4", "gpu", "dinov2"]
# String fields that hold paths or names, not one of a few values (eval.split is
# checked against JHMDB's splits only when the benchmark is jhmdb).
FREE_TEXT = {"data.path", "data.split", "data.tfds_name", "data.tfds_data_dir",
             "data.tfds_frames_key", "init.checkpoint", "eval.data_path", "eval.split",
             "train.logdir", "predict.input", "predict.output"}
# What a value needs beside it to pass (the checker names that combination itself).
NEEDS = {("model.stages", "instance"): {"loss.sem_weight": 0.0, "loss.reg_weight": 0.0},
         ("model.vit.attention", "cudnn"): {"model.dtype": "bfloat16"}}


def _string_fields(node, prefix=""):
  for key, value in node.items():
    if hasattr(value, "items"):
      yield from _string_fields(value, f"{prefix}{key}.")
    elif isinstance(value, str):
      yield prefix + key


def _documented_options():
  """{field: allowed values} from configs/base.py's comments: `x.field = "v"  # a | b | c`,
  or `# a | b | c` in the comment lines just above; a value is the word beside its `|`
  (what follows a colon in the first part, e.g. `# compute dtype: float32 | bfloat16`)."""
  fields = list(_string_fields(base.get_config()))
  found, above = {}, []
  with open(os.path.join(REPO, "configs", "base.py")) as f:
    for line in f:
      line = line.strip()
      if line.startswith("#"):
        above.append(line[1:])
        continue
      assignment = re.match(r'\w+\.([\w.]+) = "[^"]*"\s*(?:#(.*))?$', line)
      comments, above = ([assignment.group(2) or ""] + above if assignment else []), []
      comment = next((c for c in comments if "|" in c), None)
      if comment is None:
        continue
      first, *rest = comment.split("|")
      values = [re.match(r"\s*(\w+)", part).group(1) for part in [first.rsplit(":", 1)[-1], *rest]]
      field, = [f for f in fields if f.endswith("." + assignment.group(1))]  # its section
      found[field] = values
  return found


DOCUMENTED = _documented_options()


def test_every_string_option_documents_its_values():
  # A new option without `# a | b` fails here; the four below once went unchecked.
  assert set(_string_fields(base.get_config())) - FREE_TEXT == set(DOCUMENTED)
  assert {"data.augment.hue_space", "eval.prop_features", "loss.teacher_centre_gate",
          "eval.benchmark"} <= set(DOCUMENTED)
  assert DOCUMENTED["model.dtype"] == ["float32", "bfloat16"]
  assert DOCUMENTED["data.synthetic.kind"] == ["shapes", "photo_blobs", "photo_silhouettes"]


def _config(name="cpu_synthetic"):
  return importlib.import_module(f"configs.{name}").get_config()


def _get(config, field):
  node = config
  for key in field.split("."):
    node = node[key]
  return node


def _set(config, field, value):
  section, last = field.rsplit(".", 1)
  _get(config, section)[last] = value


@pytest.mark.parametrize("name", CONFIGS)
def test_every_shipped_config_passes_for_export_and_eval(name):
  assert config_checks.problems(_config(name), "export", "/tmp/w") == []
  assert config_checks.problems(_config(name), "eval", "/tmp/w") == []


def test_training_needs_its_data_path_but_the_embedded_default_runs_as_is():
  assert config_checks.problems(_config("cpu_synthetic"), "train", "/tmp/w") == []
  assert config_checks.problems(_config("tpu_v4"), "train", "/tmp/w") == [
      "data.source='frames' needs data.path (a DAVIS or YouTube-VOS folder)"]


@pytest.mark.parametrize("field", sorted(DOCUMENTED))
def test_the_checker_accepts_exactly_the_documented_values(field):
  for value in DOCUMENTED[field]:
    config = _config()
    _set(config, field, value)
    for other, needed in NEEDS.get((field, value), {}).items():
      _set(config, other, needed)
    assert config_checks.problems(config, "export", "/tmp/w") == [], value
  config = _config()
  _set(config, field, "foo")
  found = config_checks.problems(config, "export", "/tmp/w")
  assert len(found) == 1 and found[0].startswith(f"{field}='foo' is not one of "), found
  assert sorted(re.findall(r"'(\w+)'", found[0].split(" is not one of ")[1])) == sorted(
      DOCUMENTED[field])


@pytest.mark.parametrize("name", CONFIGS)
def test_every_shipped_config_uses_documented_values(name):
  config = _config(name)
  for field, allowed in DOCUMENTED.items():
    assert _get(config, field) in allowed, (field, _get(config, field))


def test_dinov2_sizes_are_multiples_of_its_patch_14():
  config = _config("dinov2")
  assert config.data.resolution[0] % 14 == 0
  config.data.resolution = (256, 256)  # the paper's, a multiple of 16 only
  config.eval.discovery_resolution = (480, 854)
  assert config_checks.problems(config, "export", "/tmp/w") == [
      "data.resolution=(256, 256) must be two multiples of the encoder stride 14",
      "eval.discovery_resolution=(480, 854) must be () (the training size) or two multiples of "
      "the encoder stride 14"]


@pytest.mark.parametrize("field,value,message", [
    ("model.num_instances", 9, "model.num_instances=9 must lie in [1, 8]"),
    ("model.vit.num_heads", 3, "model.vit.dim=64 is not divisible by model.vit.num_heads=3"),
    ("model.vit.num_registers", -1, "model.vit.num_registers=-1 must be >= 0"),
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


def test_cudnn_attention_needs_bf16_compute():
  config = _config()
  config.model.vit.attention = "cudnn"
  assert config_checks.problems(config, "train", "/tmp/w") == [
      "model.vit.attention='cudnn' needs model.dtype='bfloat16' (cuDNN's fused attention takes "
      "16-bit inputs), got 'float32'"]


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
