"""Two local processes (CPU, 2 simulated devices each, coordinator on localhost)
train like one process with 4 devices, their checkpoint resumes in one process,
and a SIGTERM to one of them stops both at the same step with one checkpoint."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from smtc_jax.data import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _command(workdir, data, steps):
  return [sys.executable, "-m", "smtc_jax.main", "--config", os.path.join(REPO, "configs/tiny.py"),
          "--workdir", str(workdir), "--config.data.source=synthetic",
          "--config.data.layout=davis", f"--config.data.path={data}",
          "--config.data.batch_size=4", "--config.data.num_workers=0",
          "--config.data.synthetic.num_train=4", "--config.data.synthetic.num_val=1",
          "--config.data.synthetic.size=48", "--config.data.synthetic.num_frames=12",
          "--config.train.log_every=1", "--config.train.checkpoint_every=3",
          f"--config.train.num_steps={steps}", "--config.train.async_checkpoints=False"]


def _env(devices):
  return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
          "JAX_PLATFORMS": "cpu"}


def _losses(workdir):
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      out[record["step"]] = record["loss"]
  return out


@pytest.mark.slow
def test_two_processes_match_one_process_and_their_checkpoint_resumes_in_one(tmp_path):
  data = tmp_path / "data"
  single = subprocess.run(_command(tmp_path / "single", data, 5), env=_env(4), cwd=REPO,
                          capture_output=True, text=True, timeout=900)
  assert single.returncode == 0, single.stderr[-3000:]
  reference = _losses(tmp_path / "single")

  port = _free_port()
  procs = [subprocess.Popen(
      _command(tmp_path / "multi", data, 3) + [f"--coordinator_address=localhost:{port}",
                                               "--num_processes=2", f"--process_id={i}"],
      env=_env(2), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  for proc in procs:
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
  multi = _losses(tmp_path / "multi")  # written by process 0 only
  assert sorted(multi) == [1, 2, 3]
  print("reference", reference, "two processes", multi)
  # Steps 1-2: the same global batches and parameters give the same losses.
  for step in (1, 2):
    np.testing.assert_allclose(multi[step], reference[step], rtol=1e-5, err_msg=f"step {step}")
  # Later steps differ by float rounding, amplified: the cross-process gradient sums
  # (gloo, 2 x 2 devices) run in another order than 1 x 4, and L_obj's gradient
  # through the unrolled slot-attention iterations amplifies rounding without the
  # detach trick (see test_train's sharded test). Seen: 7e-4 relative at step 3,
  # 2.6e-3 at step 5.
  np.testing.assert_allclose(multi[3], reference[3], rtol=5e-3)
  assert os.path.exists(tmp_path / "multi" / "checkpoints" / "3" / "data" / "process_1-of-2.json")

  resumed = subprocess.run(_command(tmp_path / "multi", data, 5), env=_env(4), cwd=REPO,
                           capture_output=True, text=True, timeout=900)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  after = _losses(tmp_path / "multi")
  print("resumed", after)
  for step in (4, 5):
    np.testing.assert_allclose(after[step], reference[step], rtol=5e-3, err_msg=f"step {step}")


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_the_same_step_with_one_checkpoint(tmp_path):
  data = tmp_path / "data"  # generated once here: two processes would race to write it
  synthetic.ensure_synthetic_davis(str(data), synthetic.SyntheticSpec(
      num_train=4, num_val=1, size=48, num_frames=12))
  workdir = tmp_path / "run"
  port = _free_port()
  procs = [subprocess.Popen(
      _command(workdir, data, 1000) + ["--config.train.checkpoint_every=500",
                                       f"--coordinator_address=localhost:{port}",
                                       "--num_processes=2", f"--process_id={i}"],
      env=_env(2), cwd=REPO, stdout=open(tmp_path / f"out{i}", "w"), stderr=subprocess.STDOUT)
           for i in range(2)]
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 900
  while not (metrics.exists() and max(_losses(workdir), default=0) >= 2):
    assert all(p.poll() is None for p in procs) and time.time() < deadline
    time.sleep(0.1)
  procs[1].send_signal(signal.SIGTERM)  # the notice reaches one process only
  for proc in procs:
    proc.wait(timeout=900)
  assert [p.returncode for p in procs] == [143, 143]
  step = max(_losses(workdir))
  assert os.listdir(workdir / "checkpoints") == [str(step)]  # both saved the same step
  assert sorted(os.listdir(workdir / "checkpoints" / str(step) / "data")) == [
      "commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"]
  line = f"preempted (SIGTERM) at step {step}: saved {workdir}/checkpoints/{step}"
  assert line in (tmp_path / "out0").read_text()
  assert line in (workdir / "train.process_1.log").read_text()
