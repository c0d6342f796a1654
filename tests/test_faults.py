"""What a run does when things break, run as a user runs it (`python -m smtc_jax.main`
on the tiny config): damaged checkpoints, SIGTERM, a kill during the save, kills at
random moments, two jobs on one workdir, a diverging run, and what the console
shows meanwhile."""

import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from smtc_jax import checkpoint, preemption, sharding, workdir_lock
from smtc_jax.training import loop
from smtc_jax.training import state as state_lib
from tests.test_train import _losses

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 600  # seconds for one run on a loaded 2-core machine

# The in-process restore of a damaged checkpoint leaves TensorStore callbacks
# that find Orbax's asyncio loop closed (main routes them to the log file).
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


class Jobs:
  """`python -m smtc_jax.main` on the tiny config and a small synthetic set,
  all jobs sharing the set and a JAX compilation cache (a run after the first
  skips most of XLA's compile time)."""

  def __init__(self, root):
    self.data = root / "data"
    self.env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(root / "jax_cache"),
                "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}

  def command(self, workdir, *overrides):
    return [sys.executable, "-m", "smtc_jax.main", "--config",
            os.path.join(REPO, "configs/tiny.py"), "--workdir", str(workdir),
            "--config.data.source=synthetic", "--config.data.layout=davis",
            f"--config.data.path={self.data}", "--config.data.batch_size=2",
            "--config.data.num_workers=0", "--config.data.synthetic.num_train=4",
            "--config.data.synthetic.num_val=1", "--config.data.synthetic.size=48",
            "--config.data.synthetic.num_frames=12", "--config.train.log_every=1",
            "--config.train.async_checkpoints=False", *overrides]

  def run(self, workdir, *overrides):
    return subprocess.run(self.command(workdir, *overrides), cwd=REPO, env=self.env,
                          capture_output=True, text=True, timeout=TIMEOUT)

  def start(self, workdir, out, *overrides):
    """A job in the background, its stdout and stderr in out.stdout / out.stderr."""
    return subprocess.Popen(self.command(workdir, *overrides), cwd=REPO, env=self.env,
                            stdout=open(f"{out}.stdout", "w"), stderr=open(f"{out}.stderr", "w"))


def _config(data):
  """The config the command line above gives."""
  config = tiny.get_config()
  d = config.data
  d.source, d.layout, d.path, d.batch_size, d.num_workers = "synthetic", "davis", str(data), 2, 0
  s = d.synthetic
  s.num_train, s.num_val, s.size, s.num_frames = 4, 1, 48, 12
  config.train.async_checkpoints = False
  return config


def _wait_for(condition, proc, what: str, poll: float = 0.05):
  deadline = time.time() + TIMEOUT
  while not condition():
    assert proc.poll() is None, f"the job ended (rc {proc.returncode}) before {what}"
    assert time.time() < deadline, f"timed out waiting for {what}"
    time.sleep(poll)


def _logged_step(workdir) -> int:
  path = os.path.join(workdir, "metrics.jsonl")
  return max(_losses(workdir), default=0) if os.path.exists(path) else 0


def _steps(workdir) -> list[str]:
  return sorted(os.listdir(os.path.join(workdir, "checkpoints")))


def _damage_arrays(step_dir, how: str) -> None:
  """Bit rot (flipped bytes) or a half-copied folder (truncated files) in the
  array files of a checkpoint's state."""
  files = glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
  assert files
  for path in files:
    data = bytearray(open(path, "rb").read())
    if how == "flip":
      data[100::50] = bytes(b ^ 0xFF for b in data[100::50])
    else:
      data = data[:len(data) // 2]
    open(path, "wb").write(bytes(data))


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
  return Jobs(tmp_path_factory.mktemp("jobs"))


@pytest.fixture(scope="module")
def trained(jobs, tmp_path_factory):
  """A 6-step run with checkpoints 2, 4 and 6: (workdir, completed process)."""
  workdir = tmp_path_factory.mktemp("trained") / "run"
  proc = jobs.run(workdir, "--config.train.num_steps=6", "--config.train.checkpoint_every=2")
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc


@pytest.fixture(scope="module")
def tiny_state(jobs, trained):
  """(config, initial TrainState) of the jobs' config, built in this process."""
  del trained  # its synthetic set
  config = _config(jobs.data)
  _, _, state, _ = state_lib.build(config, sharding.make_mesh())
  return config, state


@pytest.mark.slow
def test_console_shows_the_runs_own_lines_and_the_log_file_keeps_the_rest(jobs, trained):
  workdir, proc = trained
  lines = proc.stdout.splitlines()
  assert lines[0] == f"smtc_jax train: workdir {workdir}; full log in {workdir}/train.log"
  assert lines[1] == f"data: 4 videos of {jobs.data}/JPEGImages/480p"
  assert lines[2] == "watch: off (train.eval_every=0)"  # what the in-training watch scores
  assert lines[3].startswith("starting at step 0 of 6 on 1 device(s)")
  assert [line.split(" |")[0] for line in lines[4:10]] == [f"step {k}/6" for k in range(1, 7)]
  assert all("ETA" in line for line in lines[4:10])
  assert lines[10].startswith(f"done: step 6; checkpoints in {workdir}/checkpoints")
  assert len(lines) == 11 and proc.stderr == ""  # before: ~260 lines of absl/Orbax records
  with open(workdir / "train.log") as f:
    log = f.read()
  assert "config:" in log and "checkpoint_manager.py" in log and "step 6/6" in log


@pytest.mark.slow
def test_damaged_checkpoints_are_set_aside_and_training_resumes_from_a_readable_one(
    jobs, trained, tmp_path):
  source, _ = trained
  workdir = tmp_path / "run"
  shutil.copytree(source, workdir)
  _damage_arrays(workdir / "checkpoints" / "6", "truncate")  # a half-copied folder
  iterator_file = workdir / "checkpoints" / "4" / "data" / "process_0-of-1.json"
  iterator_file.write_text('{"next_ind')  # the data iterator's JSON damaged
  proc = jobs.run(workdir, "--config.train.num_steps=6", "--config.train.checkpoint_every=2")
  assert proc.returncode == 0, proc.stderr[-3000:]
  warnings = proc.stderr.splitlines()
  assert len(warnings) == 2 and "Traceback" not in proc.stderr
  assert warnings[0].startswith("warning: checkpoint step 6 does not read back (ValueError: ")
  assert warnings[0].endswith(f"): moved to {workdir}/checkpoints/6.unreadable; resuming from "
                              f"step 2")
  assert warnings[1] == (
      f"warning: checkpoint step 4 does not read back (ValueError: {iterator_file} is damaged "
      f"(Unterminated string starting at: line 1 column 2 (char 1))): moved to "
      f"{workdir}/checkpoints/4.unreadable; resuming from step 2")
  assert "resuming at step 2 of 6" in proc.stdout
  assert _steps(workdir) == ["2", "4", "4.unreadable", "6", "6.unreadable"]
  # Set aside as they were: nothing deleted.
  assert (workdir / "checkpoints" / "4.unreadable" / "data" / "process_0-of-1.json").read_text() \
      == '{"next_ind'
  # Steps 3-6 again from checkpoint 2: the same losses as the first time.
  first, again = _losses(source), _losses(workdir)
  for step in range(3, 7):
    np.testing.assert_allclose(again[step], first[step], rtol=1e-6, err_msg=f"step {step}")


@pytest.mark.slow
def test_eval_uses_the_newest_readable_checkpoint_and_says_so_quietly(jobs, trained, tmp_path):
  source, _ = trained
  workdir = tmp_path / "run"
  shutil.copytree(source, workdir)
  _damage_arrays(workdir / "checkpoints" / "6", "flip")  # bit rot
  proc = jobs.run(workdir, "--mode=eval")
  assert proc.returncode == 0, proc.stderr[-3000:]
  warnings = proc.stderr.splitlines()
  assert len(warnings) == 1 and warnings[0].endswith("; using step 4")
  assert warnings[0].startswith(f"warning: checkpoint step 6 ({workdir}/checkpoints/6) does not "
                                f"read back (ValueError: ")
  lines = proc.stdout.splitlines()
  assert lines[0] == f"smtc_jax eval: workdir {workdir}; full log in {workdir}/eval.log"
  assert f"evaluating params of checkpoint (step 4, {workdir}/checkpoints/4)" in lines
  assert any(line.startswith("evaluated val000 (1/1) | ETA") for line in lines)
  assert lines[-1].startswith(f"results in {workdir}/eval/synthetic")
  assert len(lines) < 20  # before: ~190 lines of absl/Orbax records
  assert _steps(workdir) == ["2", "4", "6"]  # evaluation renames nothing


@pytest.mark.slow
def test_no_readable_checkpoint_is_an_error_naming_every_step_and_renames_nothing(
    trained, tiny_state, tmp_path):
  source, _ = trained
  config, state = tiny_state
  shutil.copytree(source / "checkpoints", tmp_path / "checkpoints")
  for step in ("2", "4", "6"):
    _damage_arrays(tmp_path / "checkpoints" / step, "flip")
  manager = checkpoint.make_manager(str(tmp_path), config)
  with pytest.raises(ValueError) as error:
    checkpoint.restore_latest(manager, state, set_aside=True)
  message = str(error.value)
  assert message.startswith(f"no checkpoint in {tmp_path}/checkpoints reads back (step 6: ")
  assert "; step 4: " in message and "; step 2: " in message and "config.json" in message
  assert _steps(tmp_path) == ["2", "4", "6"]


@pytest.mark.slow
def test_a_non_finite_state_is_never_checkpointed_and_the_error_names_the_last_good_one(
    tiny_state, tmp_path):
  config, state = tiny_state
  config = config.copy_and_resolve_references()
  # Checkpoints every step, progress lines every 100: only the checkpoint's check
  # can see it (before, a NaN state was saved here).
  config.train.num_steps, config.train.checkpoint_every, config.train.log_every = 4, 1, 100

  def step(state, batch):
    """A finite loss, but the parameters turn NaN in the second step."""
    del batch
    params = jax.tree.map(lambda p: jnp.where(state.step == 1, jnp.nan, p), state.params)
    return state.replace(step=state.step + 1, params=params), {"loss": jnp.float32(1.0)}

  batch = {"student": np.zeros((2, 3, 32, 32, 3), np.uint8)}
  data_iter = iter(grain.MapDataset.source([batch] * 4).to_iter_dataset())
  manager = checkpoint.make_manager(str(tmp_path), config)
  writer, watch = loop.MetricWriter(str(tmp_path)), preemption.Watch()
  with pytest.raises(FloatingPointError) as error:
    stage = loop.Stage(config.train.num_steps, ((0, step),), lambda *_: "", sharding.make_mesh(),
                       manager, writer)
    loop.train_loop(config, stage, state, data_iter, watch)
  watch.close()
  writer.close()
  manager.wait_until_finished()
  assert str(error.value) == (
      f"non-finite values at step 2 (parameters or optimizer state): not checkpointed; the last "
      f"good checkpoint is step 1 ({tmp_path}/checkpoints/1)")
  assert _steps(tmp_path) == ["1"]


@pytest.mark.slow
def test_a_data_error_is_one_line_and_a_traceback_in_the_log(jobs, tmp_path):
  root = tmp_path / "videos"
  for name in ("a", "b"):  # two 2-frame videos: none long enough for a clip
    folder = root / "train" / "JPEGImages" / name
    folder.mkdir(parents=True)
    for i in range(2):
      (folder / f"{i:05d}.jpg").write_bytes(b"frame")
  workdir = tmp_path / "run"
  proc = jobs.run(workdir, "--config.data.source=frames", "--config.data.layout=youtube_vos",
                  f"--config.data.path={root}")
  images = root / "train" / "JPEGImages"
  assert proc.returncode == 1
  assert proc.stderr.splitlines() == [
      f"warning: {images}: skipped 2 of 2 videos: fewer than the 3 frames a clip needs "
      f"(e.g. {images / 'a'})",
      f"error: ValueError: {images}: no video has the 3 frames a clip needs (2 skipped of 2) "
      f"(traceback in {workdir}/train.log)"]
  with open(workdir / "train.log") as f:
    assert "Traceback" in f.read()


@pytest.fixture(scope="module")
def preempted(jobs, trained, tmp_path_factory):
  """A long job sent SIGTERM after a few steps, and a second job started on its
  workdir while it ran: (workdir, first job's rc, its stdout, second job)."""
  del trained  # its synthetic set and compilation cache
  root = tmp_path_factory.mktemp("preempted")
  workdir = root / "run"
  job = jobs.start(workdir, root / "first", "--config.train.num_steps=1000",
                   "--config.train.checkpoint_every=500")
  _wait_for(lambda: _logged_step(workdir) >= 2, job, "step 2")
  second = jobs.run(workdir, "--config.train.num_steps=1000")
  assert job.poll() is None  # the second job did not disturb the first
  job.send_signal(signal.SIGTERM)
  job.wait(timeout=TIMEOUT)
  with open(root / "first.stdout") as f:
    stdout = f.read()
  return workdir, job.returncode, stdout, second


@pytest.mark.slow
def test_a_second_job_on_a_live_workdir_refuses_in_one_line(preempted):
  workdir, _, _, second = preempted
  assert second.returncode == 1
  assert second.stderr.startswith(f"error: {workdir} is in use by a live training job (pid ")
  assert len(second.stderr.splitlines()) == 1 and second.stdout == ""


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_exits_143(preempted):
  workdir, returncode, stdout, _ = preempted
  assert returncode == 143
  step = _logged_step(workdir)
  assert 2 <= step < 500
  assert stdout.splitlines()[-1] == (f"preempted (SIGTERM) at step {step}: saved "
                                     f"{workdir}/checkpoints/{step}; the same command resumes "
                                     f"from it")
  assert _steps(workdir) == [str(step)]  # not a checkpoint_every step: saved for the signal


@pytest.mark.slow
def test_a_kill_during_the_next_preemption_save_leaves_the_saved_step_to_resume_from(
    jobs, preempted, tmp_path):
  source, _, _, _ = preempted
  saved = _logged_step(source)
  workdir = tmp_path / "run"
  shutil.copytree(source, workdir)
  job = jobs.start(workdir, tmp_path / "job", "--config.train.num_steps=1000",
                   "--config.train.checkpoint_every=500")
  _wait_for(lambda: _logged_step(workdir) >= saved + 2, job, f"step {saved + 2}")
  job.send_signal(signal.SIGTERM)
  pattern = str(workdir / "checkpoints" / "*.orbax-checkpoint-tmp*")
  _wait_for(lambda: glob.glob(pattern), job, "the preemption save", poll=0.001)
  job.send_signal(signal.SIGTERM)  # a second notice changes nothing
  job.send_signal(signal.SIGKILL)  # and the machine goes while the checkpoint is written
  job.wait(timeout=TIMEOUT)
  assert job.returncode == -signal.SIGKILL
  assert [s for s in _steps(workdir) if s.isdigit()] == [str(saved)]  # the save was cut
  # The dead job's lock does not block, and the next start resumes from the step
  # the first preemption saved.
  resumed = jobs.run(workdir, f"--config.train.num_steps={saved + 2}")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resuming at step {saved} of {saved + 2}" in resumed.stdout
  assert f"step {saved + 2}/{saved + 2} |" in resumed.stdout


# A test-only wrapper around `python -m smtc_jax.main` that makes two moments
# long enough to be hit by a kill: each checkpoint's data-iterator write prints
# "saving <folder>" on stderr and pauses PAUSE s before writing; the removal of
# an old checkpoint prints "deleting <folder>" and pauses after its first file.
PAUSE = 0.6
SLOW_SAVE = f"""
import os, re, runpy, sys, time
import grain
save = grain.checkpoint.CheckpointHandler.save
def slow_save(self, directory, *args, **kwargs):
  print("saving", directory, file=sys.stderr, flush=True)
  time.sleep({PAUSE})
  save(self, directory, *args, **kwargs)
  print("saved", directory, file=sys.stderr, flush=True)
grain.checkpoint.CheckpointHandler.save = slow_save
unlink, deleting = os.unlink, set()
def slow_unlink(path, *, dir_fd=None):
  unlink(path, dir_fd=dir_fd)
  folder = os.readlink(f"/proc/self/fd/{{dir_fd}}") if dir_fd is not None else ""
  step = re.search(r".*/checkpoints/(?:[^/]+/)?[0-9]+(?=/)", os.path.join(folder, os.fsdecode(path)))
  if step and ".orbax-checkpoint-tmp" not in step.group() and step.group() not in deleting:
    deleting.add(step.group())
    print("deleting", step.group(), file=sys.stderr, flush=True)
    time.sleep({PAUSE})
os.unlink = slow_unlink
runpy.run_module("smtc_jax.main", run_name="__main__", alter_sys=True)
"""


def _text(path) -> str:
  return open(path).read() if os.path.exists(path) else ""


def _leaves(tree) -> dict:
  return {jax.tree_util.keystr(path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.slow
def test_sigkills_anywhere_then_the_same_command_ends_bit_identical(jobs, trained, tmp_path):
  # Kills at seeded random moments (inside a checkpoint write, after a step, at
  # a random time from the start), each followed by the same command, until it
  # finishes. The reference is `trained`: the same 6 steps, never killed,
  # checkpointed every 2 steps synchronously (how it saved must not matter).
  rng = random.Random(35)
  workdir = tmp_path / "run"
  command = [sys.executable, "-c", SLOW_SAVE, *jobs.command(
      workdir, "--config.train.num_steps=6", "--config.train.checkpoint_every=1",
      "--config.train.async_checkpoints=True")[3:]]
  plan = ["write", "write", "step", "start"]
  rng.shuffle(plan)
  plan.append("delete")  # last: in the removal of an old checkpoint after the final save
  landed = []  # (kind, whether the kill hit an unfinished write)
  for n, kind in enumerate(plan + ["finish"]):
    out, err = tmp_path / f"job{n}.stdout", tmp_path / f"job{n}.stderr"
    job = subprocess.Popen(command, cwd=REPO, env=jobs.env, stdout=open(out, "w"),
                           stderr=open(err, "w"))
    if kind == "write":  # during this run's first or second checkpoint write
      k = rng.randint(1, 2)
      when, delay = lambda k=k: _text(err).count("saving ") >= k, rng.uniform(0.05, 0.35)
    elif kind == "step":  # anywhere after a step: the next step, a write in the background,
      k = rng.randint(1, 2)  # the deletion of an old checkpoint
      when, delay = lambda k=k: _text(out).count("\nstep ") >= k, rng.uniform(0, 1)
    elif kind == "delete":
      when = lambda: "deleting " in _text(err).partition(f"/checkpoints/6.")[2]
      delay = rng.uniform(0.05, 0.35)
    else:  # start-up, restore, compilation or the first steps (or run to the end)
      when, delay = lambda: True, rng.uniform(0, 8) if kind == "start" else TIMEOUT
    deadline = time.time() + TIMEOUT
    while job.poll() is None and not when() and time.time() < deadline:
      time.sleep(0.01)
    try:
      job.wait(timeout=delay)
    except subprocess.TimeoutExpired:
      job.send_signal(signal.SIGKILL)
      job.wait(timeout=TIMEOUT)
      markers = [line for line in _text(err).splitlines() if line.startswith(("sav", "del"))]
      in_write = bool(markers) and markers[-1].startswith("saving ")
      assert not in_write or glob.glob(str(workdir / "checkpoints" / "*.orbax-checkpoint-tmp*"))
      landed.append((kind, in_write))
      continue
    assert job.returncode == 0, _text(err)[-3000:]
    break
  assert job.returncode == 0 and "done: step 6" in _text(out), (landed, _text(err)[-3000:])
  assert len(landed) >= 4 and sum(in_write for _, in_write in landed) >= 2, landed
  assert landed[-1] == ("delete", False) and "deleting" in markers[-1], markers

  # Parameters, EMA, optimizer state (and every other leaf) bit for bit, and
  # the data iterator at the same position.
  reference_step = trained[0] / "checkpoints" / "6"
  reference = _leaves(checkpoint.load_params(str(reference_step / "state")))
  got = _leaves(checkpoint.load_params(str(workdir / "checkpoints" / "6" / "state")))
  assert sorted(got) == sorted(reference)
  for part in ("['params']", "['ema_params']", "['opt_state']"):
    assert any(key.startswith(part) for key in got), part
  for key, leaf in reference.items():
    assert got[key].dtype == leaf.dtype and np.array_equal(got[key], leaf), key
  iterator = os.path.join("data", "process_0-of-1.json")
  assert _text(workdir / "checkpoints" / "6" / iterator) == _text(reference_step / iterator)

  # Every checkpoint left reads back whole (state, data iterator, config: a
  # half-removed one lacks some); one that did not was set aside, named.
  warnings = "".join(_text(tmp_path / f"job{n}.stderr") for n in range(len(landed) + 1))
  for name in _steps(workdir):
    folder = workdir / "checkpoints" / name
    if name.isdigit():
      assert _leaves(checkpoint.load_params(str(folder / "state"))).keys() == reference.keys()
      json.loads(_text(folder / iterator))
      assert checkpoint.stored_config(folder) is not None, name
    else:
      assert checkpoint.UNREADABLE in name and f"moved to {folder};" in warnings, name


def test_a_live_lock_holder_blocks_and_a_killed_one_does_not(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from smtc_jax import workdir_lock; "
       "lock = workdir_lock.acquire(sys.argv[1]); print('held', flush=True); time.sleep(600)",
       str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == "held"
  with pytest.raises(workdir_lock.WorkdirBusy, match=f"in use by a live training job "
                                                     f"\\(pid {holder.pid} on "):
    workdir_lock.acquire(str(tmp_path))
  holder.kill()
  holder.wait()
  lock = workdir_lock.acquire(str(tmp_path))  # the kernel dropped the dead job's lock
  assert (tmp_path / workdir_lock.LOCK_FILE).read_text().startswith(f"pid {os.getpid()} on ")
  lock.close()
