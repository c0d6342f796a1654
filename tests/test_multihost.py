"""Two local processes (CPU, 2 simulated devices each, coordinator on localhost)
train like one process with 4 devices, and their checkpoint resumes in one process."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

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
