"""A gs:// workdir needs nothing else: its logs are written on the host's disk,
in a folder the console names, and copied into the bucket (run_logs.py). The
bucket here is a GCS emulator on the loopback (conftest.gcs), which gcsfs
(under Orbax's etils.epath) and tensorstore reach through their endpoint
variables; nothing leaves this machine."""

import json
import os
import shlex
import subprocess
import sys
import tempfile

import pytest

from configs import tpu_v4
from smtc_jax import config_checks, run_logs
from smtc_jax.training import loop
from tests.conftest import GCS_BUCKET

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = GCS_BUCKET


def _read(path: str) -> bytes:
  from etils import epath  # pylint: disable=g-import-not-at-top
  return epath.Path(path).read_bytes()


def _exists(path: str) -> bool:
  from etils import epath  # pylint: disable=g-import-not-at-top
  return epath.Path(path).exists()


def test_the_pod_config_takes_a_gs_workdir_without_a_logdir(tmp_path):
  config = tpu_v4.get_config()
  config.data.path = str(tmp_path)
  assert not [p for p in config_checks.problems(config, "train", "gs://bucket/run")
              if "workdir" in p or "logdir" in p]
  # --mode=eval writes with local file calls: one line, not a local folder named "gs:".
  assert config_checks.problems(config, "eval", "gs://bucket/run")[-1] == (
      "workdir gs://bucket/run is remote: --mode=eval writes its results locally; copy "
      "gs://bucket/run/export into a local folder's export/ and give that folder as --workdir")
  config.train.logdir = "gs://bucket/logs"
  assert "train.logdir='gs://bucket/logs' must be a local folder" in "\n".join(
      config_checks.problems(config, "train", "gs://bucket/run"))


def test_the_local_log_folder_of_each_kind_of_workdir():
  config = tpu_v4.get_config()
  assert run_logs.local_dir(config, "gs://b/runs/smtc") == os.path.join(
      tempfile.gettempdir(), "smtc_jax_logs", "gs", "b", "runs", "smtc")
  assert run_logs.local_dir(config, "/runs/smtc") == "/runs/smtc"
  config.train.logdir = "/scratch/logs"
  assert run_logs.local_dir(config, "gs://b/runs/smtc") == "/scratch/logs"


def test_metrics_tensorboard_and_logs_reach_the_bucket_and_a_resume_appends(gcs, tmp_path):
  del gcs
  remote = f"gs://{BUCKET}/copied"
  local = str(tmp_path / "host0")
  os.makedirs(local)
  for name, text in (("config.json", "{}"), ("train.log", "line 1\n"),
                     ("train.process_1.log", "other host\n"), ("train.lock", "pid 1\n")):
    with open(os.path.join(local, name), "w") as f:
      f.write(text)
  mirror = run_logs.Mirror(local, remote, process_index=0)
  writer = loop.MetricWriter(local, mirror=mirror)
  writer.write(10, {"loss": 1.5})
  writer.write(20, {"loss": 1.25})
  writer.close()
  events = os.listdir(os.path.join(local, "tensorboard"))
  assert len(events) == 1
  with open(os.path.join(local, "tensorboard", events[0]), "rb") as f:
    assert _read(f"{remote}/tensorboard/{events[0]}") == f.read()
  lines = _read(f"{remote}/metrics.jsonl").decode().splitlines()
  assert [json.loads(line)["step"] for line in lines] == [10, 20]
  assert _read(f"{remote}/train.log") == b"line 1\n" and _read(f"{remote}/config.json") == b"{}"
  # Another process's log and the local lock are not process 0's to copy.
  assert not _exists(f"{remote}/train.process_1.log") and not _exists(f"{remote}/train.lock")
  run_logs.Mirror(local, remote, process_index=1).push(force=True)
  assert _read(f"{remote}/train.process_1.log") == b"other host\n"
  # A resume on a fresh host: the bucket's metrics come back first, then grow.
  fresh = str(tmp_path / "fresh_host")
  again = run_logs.Mirror(fresh, remote, process_index=0)
  again.pull(["metrics.jsonl", "train.log"])
  writer = loop.MetricWriter(fresh, mirror=again)
  writer.write(30, {"loss": 1.0})
  writer.close()
  steps = [json.loads(line)["step"] for line in _read(f"{remote}/metrics.jsonl").splitlines()]
  assert steps == [10, 20, 30]
  assert _read(f"{remote}/train.log") == b"line 1\n"


def test_a_bucket_that_cannot_be_written_is_one_warning_and_the_run_goes_on(gcs, tmp_path, caplog):
  del gcs
  with open(tmp_path / "train.log", "w") as f:
    f.write("x\n")
  mirror = run_logs.Mirror(str(tmp_path), "gs://no-such-bucket/run", process_index=0)
  with caplog.at_level("INFO"):
    mirror.push(force=True)
    mirror.push(force=True)
  warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"
              and "could not write the run's logs" in r.getMessage()]
  assert len(warnings) == 1 and "gs://no-such-bucket/run/train.log" in warnings[0]


def _main(args, env, timeout=240):
  return subprocess.run([sys.executable, "-m", "smtc_jax.main", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_the_job_names_its_local_log_folder_and_copies_its_log_into_the_bucket(gcs, tmp_path):
  """--mode=export on an empty gs:// workdir: Orbax looks in the bucket and finds
  no checkpoint; the console names the local folder and the log lands in the bucket."""
  del gcs
  env = {**os.environ, "TMPDIR": str(tmp_path)}
  workdir = f"gs://{BUCKET}/empty_run"
  proc = _main(["--config", "configs/tiny.py", "--workdir", workdir, "--mode=export"], env)
  local = os.path.join(str(tmp_path), "smtc_jax_logs", "gs", BUCKET, "empty_run")
  assert proc.returncode == 1, proc.stdout + proc.stderr
  assert f"full log in {local}/export.log" in proc.stdout
  assert f"copied into {workdir}" in proc.stdout
  assert f"no checkpoint in {workdir}/checkpoints" in proc.stderr
  log = _read(f"{workdir}/export.log").decode()
  assert f"no checkpoint in {workdir}/checkpoints" in log and "Traceback" in log


def _planned_main_args(plan: str) -> list[str]:
  """The smtc_jax.main arguments of a launch script's --dry-run plan."""
  for line in plan.splitlines():
    words = shlex.split(line[1:])
    for word in words:  # the TPU script's remote command is one word
      if "smtc_jax.main" in word and word != "smtc_jax.main":
        words = shlex.split(word)
        break
    if "smtc_jax.main" in words:
      args = words[words.index("smtc_jax.main") + 1:]
      return args[:args.index(">")] if ">" in args else args
  raise AssertionError(f"no smtc_jax.main in the plan:\n{plan}")


@pytest.mark.parametrize("script,env", [
    ("launch/tpu_pod.sh", {"PROJECT": "p", "ZONE": "z", "TPU_NAME": "v4", "BUCKET": "gs://b"}),
    ("launch/gpu.sh", {"WORKDIR": "gs://b/smtc"}),
    ("launch/slurm.sbatch", {"WORKDIR": "gs://b/smtc"}),
])
def test_the_launch_scripts_start_a_job_that_takes_a_gs_workdir(script, env, tmp_path):
  env = {**{k: v for k, v in os.environ.items() if k not in ("WORKDIR", "BUCKET")}, **env,
         "DATA_PATH": str(tmp_path), "INIT_CHECKPOINT": str(tmp_path)}
  proc = subprocess.run(["bash", script, "--dry-run"], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  args = _planned_main_args(proc.stdout)
  assert any(a.startswith("gs://b/") for a in args) and not any("logdir" in a for a in args)
  check = ("import sys; from smtc_jax import config_checks, main; main.parse_flags(sys.argv); "
           "f = main.FLAGS; print(config_checks.problems(f.config, f.mode, f.workdir))")
  out = subprocess.run([sys.executable, "-c", check, *args], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
