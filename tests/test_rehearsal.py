"""A dress rehearsal of the paper's run (docs/paper_run.md), command for command,
as a user would type it, with configs/tpu_v4.py unchanged but for its sizes:

  1. DINO's ViT-S/16 in DINO's key layout (random weights, torch.save), converted
     by `python -m smtc_jax.convert --kind dino_vit` and given as init.checkpoint;
  2. a YouTube-VOS-layout training folder and a DAVIS-2017-layout benchmark folder;
  3. the workdir in a bucket (gs://) served by a GCS emulator on the loopback
     (conftest.gcs): every checkpoint, the export and the copies of the logs go
     through Orbax, tensorstore and gcsfs to it; two processes with 4 host
     devices each, each with its own temporary folder (a host's own disk);
  4. SIGTERM to both mid-run: both save one checkpoint and exit 143; the same
     command on fresh disks (a new slice) resumes, appends to the bucket's
     metrics and finishes;
  5. --mode=export into the bucket;
  6. the export copied into a local folder, --mode=eval on the DAVIS-2017 folder;
  7. eval's discovery and propagation masks scored by ours and by the official
     davis2017-evaluation tool: the same files, byte for byte, and the J&F that
     eval reported.

Sizes overridden (nothing else of tpu_v4): data.resolution 64x64 (a 4x4 token
grid), data.batch_size 8 (one clip per device), train.num_steps 6 with a
progress line every step (train.log_every, so the preempted run's steps are in
the metrics), data.num_workers 1 (the pod's 16 decoding processes per host are
16 Python processes each, on 2 cores), and 4 videos in each folder. The model
is the recipe's: ViT-S/16 (12 blocks, 384 wide), N=16, P=4, T=4. About 5 min
on 2 cores: each run of the pod compiles the train step once per process.

Not rehearsed, and why:
  - a real TPU pod: its processes find each other through the TPU metadata
    server; here they are given --coordinator_address/--num_processes/--process_id,
    as launch/gpu.sh gives them (tests/test_launch.py checks tpu_pod.sh's plan);
  - a real bucket and Google's credentials: the emulator takes a fixed token and
    every metadata lookup goes to a closed port on the loopback (conftest.py);
  - `gcloud storage cp` for the export's local copy: gcloud is no Python package;
    the test copies the same objects with gcsfs, which installs with the project.

It needs torch (torch.save and the converter's torch.load), so CI runs it in its
second step, with the PyTorch parity tests (.ci/run: -m "parity or rehearsal").
"""

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests import benchmark_layouts as layouts
from tests.conftest import GCS_BUCKET
from tests.test_davis import _official_tool

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKDIR = f"gs://{GCS_BUCKET}/smtc/smtc-v4"
SIZES = ["--config.data.resolution=(64, 64)", "--config.data.batch_size=8",
         "--config.train.num_steps=6", "--config.train.log_every=1",
         "--config.data.num_workers=1"]
TIMEOUT = 900


def _dino_vits16(torch, path):
  """DINO's ViT-S/16 state dict (dino_deitsmall16_pretrain.pth's keys and shapes)."""
  gen = torch.Generator().manual_seed(0)
  r = lambda *shape: torch.randn(*shape, generator=gen) * 0.02
  dim, hidden = 384, 1536
  state = {"cls_token": r(1, 1, dim), "pos_embed": r(1, 14 * 14 + 1, dim),
           "patch_embed.proj.weight": r(dim, 3, 16, 16), "patch_embed.proj.bias": r(dim),
           "norm.weight": 1 + r(dim), "norm.bias": r(dim)}
  for i in range(12):
    b = f"blocks.{i}"
    state.update({f"{b}.norm1.weight": 1 + r(dim), f"{b}.norm1.bias": r(dim),
                  f"{b}.norm2.weight": 1 + r(dim), f"{b}.norm2.bias": r(dim),
                  f"{b}.attn.qkv.weight": r(3 * dim, dim), f"{b}.attn.qkv.bias": r(3 * dim),
                  f"{b}.attn.proj.weight": r(dim, dim), f"{b}.attn.proj.bias": r(dim),
                  f"{b}.mlp.fc1.weight": r(hidden, dim), f"{b}.mlp.fc1.bias": r(hidden),
                  f"{b}.mlp.fc2.weight": r(dim, hidden), f"{b}.mlp.fc2.bias": r(dim)})
  torch.save(state, path)


def _python(args, env, log, timeout=TIMEOUT):
  """Runs `python ARGS` in the repository; its output goes to `log`."""
  with open(log, "w") as out:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, stdout=out,
                          stderr=subprocess.STDOUT, timeout=timeout)
  with open(log) as f:
    text = f.read()
  assert proc.returncode == 0, text[-4000:]
  return text


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _host_env(tmp_path, name):
  """A host of the pod: 4 CPU devices and its own temporary folder (its disk)."""
  disk = tmp_path / name
  disk.mkdir()
  return {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
          "JAX_PLATFORMS": "cpu", "TMPDIR": str(disk)}


def _start_pod(train_command, tmp_path, run):
  """The training command on two hosts; their console output in tmp_path/<run>_<i>."""
  port = _free_port()
  procs, logs = [], []
  for i in range(2):
    logs.append(tmp_path / f"{run}_{i}.out")
    procs.append(subprocess.Popen(
        train_command + [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                         f"--process_id={i}"],
        cwd=REPO, env=_host_env(tmp_path, f"{run}_host{i}"), stdout=open(logs[-1], "w"),
        stderr=subprocess.STDOUT))
  return procs, logs


def _bucket():
  import gcsfs  # pylint: disable=g-import-not-at-top
  return gcsfs.GCSFileSystem(skip_instance_cache=True)


def _steps(metrics: bytes) -> list[int]:
  import json  # pylint: disable=g-import-not-at-top
  return [json.loads(line)["step"] for line in metrics.decode().splitlines()]


@pytest.mark.slow
@pytest.mark.rehearsal
def test_the_papers_run_as_a_user_runs_it(gcs, tmp_path):
  del gcs
  torch = pytest.importorskip("torch")
  tool, tool_python = _official_tool()
  began = time.time()
  env = dict(os.environ)

  # 1. Convert DINO's encoder (docs/paper_run.md step 1).
  pth, dino = str(tmp_path / "dino_deitsmall16_pretrain.pth"), str(tmp_path / "dino_vits16")
  _dino_vits16(torch, pth)
  out = _python(["-m", "smtc_jax.convert", "--kind", "dino_vit", "--input", pth, "--output", dino],
                env, tmp_path / "convert.out")
  assert f"wrote dino_vit parameters from {pth} to {dino}" in out

  # 2. The frames and the benchmark.
  youtube_vos, davis_root = str(tmp_path / "youtube_vos"), str(tmp_path / "DAVIS")
  layouts.write_youtube_vos(youtube_vos, layouts.videos(4, frames=16, size=72, seed=1))
  layouts.write_davis2017(davis_root, layouts.videos(4, frames=8, size=64, seed=2))

  # 3. Two hosts, the workdir in the bucket (step 3), SIGTERM to both mid-run (step 4).
  train_command = [sys.executable, "-m", "smtc_jax.main", "--config", "configs/tpu_v4.py",
                   "--workdir", WORKDIR, f"--config.data.path={youtube_vos}",
                   f"--config.init.checkpoint={dino}"] + SIZES
  procs, logs = _start_pod(train_command, tmp_path, "first")
  deadline = time.time() + TIMEOUT
  while "step 1/" not in logs[0].read_text():  # process 0's progress line: a step is done
    assert all(p.poll() is None for p in procs) and time.time() < deadline, \
        "\n".join(log.read_text()[-3000:] for log in logs)
    time.sleep(0.2)
  for proc in procs:
    proc.send_signal(signal.SIGTERM)
  for proc in procs:
    proc.wait(timeout=TIMEOUT)
  first = [log.read_text() for log in logs]
  assert [p.returncode for p in procs] == [143, 143], "\n".join(t[-3000:] for t in first)
  stopped = [line for line in first[0].splitlines() if "preempted (SIGTERM) at step" in line]
  assert len(stopped) == 1, first[0][-3000:]
  step = int(stopped[0].split("at step ")[1].split(":")[0])
  assert 1 <= step < 6
  assert f"saved {WORKDIR}/checkpoints/{step}; the same command resumes from it" in stopped[0]
  bucket = _bucket()
  prefix = WORKDIR[len("gs://"):]
  assert bucket.ls(f"{prefix}/checkpoints") == [f"{prefix}/checkpoints/{step}"]
  assert {"process_0-of-2.json", "process_1-of-2.json"} <= {
      os.path.basename(p) for p in bucket.ls(f"{prefix}/checkpoints/{step}/data")}
  assert _steps(bucket.cat(f"{prefix}/metrics.jsonl")) == list(range(1, step + 1))
  assert "watch: off (train.eval_every=0)" in first[0]

  # The same command on fresh disks resumes from the bucket and finishes.
  procs, logs = _start_pod(train_command, tmp_path, "again")
  for proc in procs:
    proc.wait(timeout=TIMEOUT)
  again = [log.read_text() for log in logs]
  assert [p.returncode for p in procs] == [0, 0], "\n".join(t[-3000:] for t in again)
  assert f"resuming at step {step} of 6" in again[0]
  assert f"done: step 6; checkpoints in {WORKDIR}/checkpoints" in again[0]
  # The bucket holds the whole run: metrics of both runs, logs of both hosts, events.
  bucket.invalidate_cache()  # gcsfs lists a folder once, then answers from memory
  assert _steps(bucket.cat(f"{prefix}/metrics.jsonl")) == list(range(1, 7))
  train_log = bucket.cat(f"{prefix}/train.log").decode()
  assert f"preempted (SIGTERM) at step {step}" in train_log and "done: step 6" in train_log
  assert f"resuming at step {step}" in bucket.cat(f"{prefix}/train.process_1.log").decode()
  assert bucket.ls(f"{prefix}/tensorboard")
  assert bucket.exists(f"{prefix}/checkpoints/6")

  # 5. Export into the bucket.
  out = _python(["-m", "smtc_jax.main", "--config", "configs/tpu_v4.py", "--workdir", WORKDIR,
                 "--mode=export"] + SIZES, env, tmp_path / "export.out")
  assert f"exported step 6 to {WORKDIR}/export" in out
  bucket.invalidate_cache()
  assert bucket.exists(f"{prefix}/export.log")

  # 6. Evaluate a local copy of the export (gcloud storage cp -r in the docs).
  runs = tmp_path / "runs" / "smtc"
  runs.mkdir(parents=True)
  bucket.get(f"{prefix}/export", str(runs / "export"), recursive=True)
  out = _python(["-m", "smtc_jax.main", "--config", "configs/tpu_v4.py", "--workdir", str(runs),
                 "--mode=eval", "--config.eval.benchmark=davis2017",
                 f"--config.eval.data_path={davis_root}"] + SIZES, env, tmp_path / "eval.out")
  assert "evaluating params of export" in out and "step 6" in out, out[-3000:]
  results_dir = runs / "eval" / "davis2017"
  with open(results_dir / "results.csv") as f:
    reported = {row["method"]: row for row in csv.DictReader(f)}["trained"]

  # 7. Ours and the official tool score eval's masks: discovery (unsupervised; at 6
  # steps from random weights no instance passes eq. 11, so its masks are empty)
  # and label propagation (semi-supervised; its masks carry the labels).
  scored = {}
  for task, kind, column in (("unsupervised", "discovery", "multi-object J&F (video matching)"),
                             ("semi-supervised", "propagation", "label propagation J&F")):
    results, official = str(results_dir / kind), str(tmp_path / f"official-{kind}")
    assert sorted(os.listdir(results)) == ["seq0", "seq1", "seq2", "seq3"]
    shutil.copytree(results, official)
    _python(["-m", "smtc_jax.evaluation.davis", "--davis_path", davis_root, "--results_path",
             results, "--task", task], env, tmp_path / f"score-{kind}.out")
    proc = subprocess.run([tool_python, os.path.join(tool, "evaluation_method.py"), "--davis_path",
                           davis_root, "--results_path", official, "--task", task, "--set", "val"],
                          cwd=tool, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for name in ("global_results-val.csv", "per-sequence_results-val.csv"):
      with open(os.path.join(results, name), "rb") as a, \
           open(os.path.join(official, name), "rb") as b:
        assert a.read() == b.read(), (kind, name)
    with open(os.path.join(official, "global_results-val.csv")) as f:
      scored[kind] = float(next(csv.DictReader(f))["J&F-Mean"])
    # eval's table (4 digits) says what the official tool says (3 digits).
    assert float(reported[column]) == pytest.approx(scored[kind], abs=6e-4), (kind, reported)
  assert scored["propagation"] > 0  # the comparison saw labelled masks
  print(f"rehearsal: {time.time() - began:.0f} s; preempted at step {step}; official J&F {scored}")
