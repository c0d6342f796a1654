"""The launch scripts parse, pass shellcheck, fail clearly without their
variables, and print their plan with --dry-run."""

import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["launch/common.sh", "launch/tpu_pod.sh", "launch/gpu.sh", "launch/slurm.sbatch",
           "launch/bench_gpu.sh"]
ENV = {"PROJECT": "my-project", "ZONE": "us-central2-b", "TPU_NAME": "smtc-v4",
       "BUCKET": "gs://my-bucket", "DATA_PATH": "/data/ytvos", "INIT_CHECKPOINT": "/ckpt/dino",
       "WORKDIR": "/runs/smtc"}


def _run(script, *args, env=None):
  clean = {k: v for k, v in os.environ.items() if k not in ENV}
  return subprocess.run(["bash", script, *args], cwd=REPO, env={**clean, **(env or {})},
                        capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_parses(script):
  assert subprocess.run(["bash", "-n", script], cwd=REPO).returncode == 0


def test_scripts_pass_shellcheck():
  if shutil.which("shellcheck") is None:
    if os.environ.get("CI"):
      pytest.fail("shellcheck is missing in CI (.ci/run installs it)")
    pytest.skip("shellcheck is not installed")
  proc = subprocess.run(["shellcheck", "-x", *SCRIPTS], cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout


@pytest.mark.parametrize("script,expected", [
    ("launch/tpu_pod.sh", ["tpu-vm create smtc-v4", "--worker=all", "smtc_jax.main",
                           "gs://my-bucket/smtc/smtc-v4", "--worker=0"]),
    ("launch/gpu.sh", ["pip install", "smtc_jax.main --config configs/gpu.py --workdir /runs/smtc"]),
    ("launch/slurm.sbatch", ["srun --ntasks-per-node=1", "--config.init.checkpoint=/ckpt/dino"]),
])
def test_dry_run_prints_the_plan(script, expected):
  env = {k: v for k, v in ENV.items() if not (script.endswith("tpu_pod.sh") and k == "WORKDIR")}
  proc = _run(script, "--dry-run", "--", "--config.train.num_steps=5", env=env)
  assert proc.returncode == 0, proc.stderr
  plan = proc.stdout.replace("\\ ", " ")
  for piece in expected + ["--config.train.num_steps=5"]:
    assert piece in plan, (piece, plan)


@pytest.mark.parametrize("script,needed", [
    ("launch/tpu_pod.sh", ["PROJECT", "ZONE", "TPU_NAME", "BUCKET"]),
    ("launch/gpu.sh", ["WORKDIR", "DATA_PATH", "INIT_CHECKPOINT"]),
    ("launch/slurm.sbatch", ["WORKDIR"]),
])
def test_missing_variables_are_named(script, needed):
  proc = _run(script, "--dry-run")
  assert proc.returncode == 2
  for name in needed:
    assert f"{name} is not set" in proc.stderr
