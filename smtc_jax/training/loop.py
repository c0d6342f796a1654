"""The training loop shared by the jobs (train.py, pretrain.py): a Stage's
steps from the state's to its last, with progress lines and metrics
(MetricWriter), checks that nothing non-finite is logged or saved,
checkpoints, the in-training watch, and a checkpoint at a preemption notice;
and what a job does before it: refuse a resume under another config, write
the config beside the logs."""

import dataclasses
import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from smtc_jax import checkpoint
from smtc_jax import console
from smtc_jax import preemption
from smtc_jax import run_config
from smtc_jax import run_logs
from smtc_jax import sharding


class MetricWriter:
  """TensorBoard scalars and a metrics.jsonl file, from process 0 only; names
  get `prefix` (e.g. 'pretrain/' for the encoder pretraining stage). With a
  `mirror` (run_logs.Mirror of a gs:// workdir) they are copied into the
  workdir as they grow and at close."""

  def __init__(self, logdir: str, prefix: str = "", mirror: run_logs.Mirror | None = None):
    self.enabled = jax.process_index() == 0
    self.prefix = prefix
    self.mirror = mirror
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self.tb = SummaryWriter(os.path.join(logdir, "tensorboard"))
      self.jsonl = open(os.path.join(logdir, "metrics.jsonl"), "a")

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    scalars = {self.prefix + name: value for name, value in scalars.items()}
    for name, value in scalars.items():
      self.tb.add_scalar(name, value, step)
    self.jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self.jsonl.flush()
    if self.mirror:
      self.tb.flush()  # the event file complete on disk before it is copied
      self.mirror.push()

  def image(self, step: int, name: str, image: np.ndarray) -> None:
    """An (H, W, 3) uint8 image in TensorBoard."""
    if self.enabled:
      self.tb.add_image(self.prefix + name, image, step, dataformats="HWC")

  def close(self) -> None:
    if self.enabled:
      self.tb.close()
      self.jsonl.close()
      if self.mirror:
        self.mirror.push(force=True)


def progress_line(name: str, step: int, num_steps: int, fields: str,
                  steps_per_sec: float) -> str:
  """'<name>step s/n | <fields> | r steps/s | ETA m min': a stage's console line."""
  eta = (num_steps - step) / max(steps_per_sec, 1e-9)
  return (f"{name}step {step}/{num_steps} | {fields} | {steps_per_sec:.2f} steps/s | "
          f"ETA {eta / 60:.1f} min")


def save_config(config, logdir: str) -> str | None:
  """Process 0 writes the config into `logdir` as config.json, or config.<n>.json
  beside the earlier runs' (run_config.save); returns that file."""
  if jax.process_index() == 0:
    return run_config.save(config, logdir)
  return None


def check_resume(config, directory: str, compared=None, resumable=run_config.RESUMABLE) -> None:
  """Refuse a resume from `directory`'s checkpoints under another config
  (run_config.ConfigMismatch; `compared` and `resumable` as checkpoint.check_resume);
  a console line names the fields that may change and did."""
  changes = checkpoint.check_resume(directory, config, compared, resumable)
  if changes:
    console.say(f"resuming {directory} with changed {'; '.join(changes)}")


def start_logs(config, workdir: str, checkpoints: str, compared=None,
               resumable=run_config.RESUMABLE) -> str:
  """Before a job writes anything: its config checked against the checkpoints
  in `checkpoints` (check_resume), then the local log folder
  (run_logs.local_dir) made and the config saved in it; returns that folder."""
  check_resume(config, checkpoints, compared, resumable)
  logdir = run_logs.local_dir(config, workdir)
  os.makedirs(logdir, exist_ok=True)
  save_config(config, logdir)
  return logdir


@jax.jit
def all_finite(tree) -> jax.Array:
  """True if every float in `tree` (a whole TrainState) is finite."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves))


def check_finite(step: int, scalars: dict[str, float], state, last_saved: int | None,
                 directory) -> None:
  """Stop before a non-finite loss is logged or a non-finite state is saved;
  `state` is None on steps that log without saving."""
  bad = [f"{k} {v}" for k, v in scalars.items() if not np.isfinite(v)]
  if state is not None and not bool(all_finite(state)):
    bad.append("parameters or optimizer state")
  if not bad:
    return
  last = (f"the last good checkpoint is step {last_saved} ({directory}/{last_saved})"
          if last_saved is not None else f"there is no checkpoint in {directory} yet")
  raise FloatingPointError(f"non-finite values at step {step} ({', '.join(bad)}): not "
                           f"checkpointed; {last}")


@dataclasses.dataclass(frozen=True)
class Stage:
  """What the loop runs and where it reports: `num_steps` steps, `steps`
  ((first step, jitted step), ...) in order, each run from its first step on,
  `progress(done, scalars, steps_per_sec)` its console line, the mesh the
  batches are put on, the checkpoint manager, the MetricWriter, and an optional
  `monitor` (evaluation.monitor.TrainingMonitor) whose figures and overlay go
  to TensorBoard and the console every train.eval_every steps."""
  num_steps: int
  steps: tuple[tuple[int, Callable], ...]
  progress: Callable[..., str]
  mesh: Any
  manager: Any
  writer: MetricWriter
  monitor: Callable | None = None

  def step_fn(self, step: int) -> Callable:
    """The jitted step that runs at `step`: the last one begun by then."""
    return [fn for first, fn in self.steps if first <= step][-1]


def run_loop(config, stage: Stage, state, data_iter):
  """train_loop under a preemption watch; closes the checkpoint manager (after
  its last write) and the writer, however the loop ends."""
  watch = preemption.Watch()
  try:
    return train_loop(config, stage, state, data_iter, watch)
  finally:
    watch.close()
    checkpoint.close(stage.manager)
    stage.writer.close()


def train_loop(config, stage: Stage, state, data_iter, watch):
  """(final state, last logged metrics) of the steps from the state's to
  stage.num_steps: log, check, evaluate, checkpoint (every train.log_every,
  train.checkpoint_every and train.eval_every steps, and at the end). A
  checkpoint step checks the whole state, a log step the metrics, so no
  non-finite state is ever saved and no non-finite loss is logged. At a
  preemption notice (`watch`, preemption.Watch) it saves the step it reached
  and raises preemption.Preempted."""
  t, last, manager, writer = config.train, stage.num_steps, stage.manager, stage.writer
  start = int(state.step)
  last_saved = start or None  # a resumed state is its checkpoint's
  scalars, tick, tick_step = {}, time.time(), start
  for step in range(start, last):
    batch = sharding.global_batch(next(data_iter), stage.mesh)
    state, metrics = stage.step_fn(step)(state, batch)
    done = step + 1
    preempted = watch.reached(done) and done < last  # reached() runs every step
    log_now = done % t.log_every == 0 or done == last
    save_now = done % t.checkpoint_every == 0 or done == last or preempted
    if log_now or save_now:
      scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
      check_finite(done, scalars, state if save_now else None, last_saved, manager.directory)
    if log_now:
      rate = (done - tick_step) / (time.time() - tick)
      scalars["steps_per_sec"] = rate
      tick, tick_step = time.time(), done
      writer.write(done, scalars)
      console.say(stage.progress(done, scalars, rate))
    if stage.monitor and (done % t.eval_every == 0 or done == last):
      figures, strip = stage.monitor(state)
      writer.write(done, figures)
      writer.image(done, "eval/overlay", strip)
      console.say(f"eval at step {done} ({stage.monitor.describe()}) | " +
                  " | ".join(f"{k[len('eval/'):]} {v:.3f}" for k, v in figures.items()))
    if save_now:
      checkpoint.save(manager, done, state, data_iter, config)
      last_saved = done
    if preempted:
      manager.wait_until_finished()
      raise preemption.Preempted(f"preempted (SIGTERM) at step {done}: saved "
                                 f"{manager.directory}/{done}; the same command resumes from it")
  return state, scalars
