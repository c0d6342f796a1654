"""The launch scripts parse, pass shellcheck, fail clearly without their
variables, and print their plan with --dry-run."""

import json
import os
import shutil
import subprocess
import sys

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


_STUB_PYTHON = """#!{python}
# bench_gpu.sh's interpreter: `-m smtc_jax.bench step ...` prints a JSON line of its
# flags (10 ms a step); anything else runs in the real interpreter.
import json, os, sys
if sys.argv[1:2] == ["-m"]:
  flags = sys.argv[4:]
  dtype = "bfloat16" if "--config.model.dtype=bfloat16" in flags else "float32"
  flops = 1e12 if "--config.model.vit.attention=xla" not in flags else 0.5e12  # not counted
  print(json.dumps({{"flags": flags, "dtype": dtype, "step_s": 0.01, "clips_per_s": 1.0,
                    "step_flops": flops, "achieved_flops_per_s": 1e14, "matmul_peak_f32": 4e14,
                    "matmul_peak_bf16": 8e14, "xla_temp_bytes": 1e9, "peak_memory_bytes": 2e9,
                    "compile_s": 1.0}}))
else:
  os.execv(sys.executable, [sys.executable] + sys.argv[1:])
"""


def test_the_attention_benchmark_runs_its_variants_and_reports_mfu(tmp_path):
  stub = tmp_path / "python"
  stub.write_text(_STUB_PYTHON.format(python=sys.executable))
  stub.chmod(0o755)
  out = tmp_path / "out"
  proc = _run("launch/bench_gpu.sh", "--steps", "1", env={
      "SET": "attention", "OUT": str(out), "PYTHON": str(stub), "CONFIG": "configs/tiny.py",
      "ATTENTION": "xla", "PATH": os.environ["PATH"]})
  assert proc.returncode == 0, proc.stdout + proc.stderr
  rows = [json.loads(line) for line in (out / "step.jsonl").read_text().splitlines()]
  assert [r["variant"] for r in rows] == ["bf16", "bf16_fused", "bf16_padded_xla", "bf16_frozen",
                                          "bf16_fused_frozen"]
  for r in rows:
    flags = r["flags"]
    assert flags[:2] == ["--config", "configs/tiny.py"] and r["dtype"] == "bfloat16"
    assert flags[-6:] == ["--warmup", "2", "--steps", "5", "--steps", "1"]  # the caller's last
    assert ("--frozen" in flags) == r["variant"].endswith("frozen")
    attention = [f for f in flags if f.startswith("--config.model.vit.attention=")]
    assert attention == {"bf16": [], "bf16_frozen": [], "bf16_padded_xla": [
        "--config.model.vit.attention=xla"]}.get(r["variant"], ["--config.model.vit.attention=xla"])
  # 1 TFLOP (the default attention's count for each) in 10 ms against the datasheet's
  # 989 TFLOP/s bf16 peak.
  table = proc.stdout.splitlines()
  assert "MFU" in table[-7] and all(" 10.1% " in line for line in table[-6:-1]), proc.stdout
