"""`--mode=train`: the SMTC training job over smtc_jax/training (the state,
the step and the loop): data, model and checkpoints set up, the steps
compiled, the loop run, the in-training watch attached."""

import functools
import os

import jax
import ml_collections

from smtc_jax import checkpoint
from smtc_jax import console
from smtc_jax import run_logs
from smtc_jax import sharding
from smtc_jax.data import pipeline
from smtc_jax.evaluation import monitor
from smtc_jax.training import loop
from smtc_jax.training import state as state_lib
from smtc_jax.training import step as step_lib


def progress_line(step, scalars, steps_per_sec, *, num_steps) -> str:
  """The console line of the last step's metrics; 'teacher centred' while the
  warm-up's guard against a collapsed start is on (loss.teacher_centre_steps)."""
  cycle = f" cycle {scalars['loss_cycle']:.4f}" if scalars.get("loss_cycle") else ""
  centred = " (teacher centred)" if scalars.get("teacher_centred") else ""
  fields = (f"loss {scalars['loss']:.4f} (sem {scalars['loss_sem']:.4f} "
            f"reg {scalars['loss_reg']:.4f} obj {scalars['loss_obj']:.4f}{cycle}) | valid "
            f"{scalars['valid_fraction']:.2f} | top semantic {scalars['semantic_top_share']:.2f}"
            f"{centred} | lr {scalars['lr']:.2e}")
  return loop.progress_line("", step, num_steps, fields, steps_per_sec)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Train (resuming from the workdir's newest readable checkpoint); returns the
  last metrics. At a preemption notice (SIGTERM) it saves the current step and
  raises preemption.Preempted."""
  mesh = sharding.make_mesh()
  sharding.check_batch_divisible(config.data.batch_size, mesh)
  # A bad micro-batch size fails before anything is built.
  microbatches = step_lib.microbatches_per_step(config, mesh)
  # The config is checked against the checkpoints' before a file is written.
  logdir = loop.start_logs(config, workdir, os.path.join(workdir, checkpoint.CHECKPOINT_DIR))
  source = pipeline.make_source(config, workdir)
  data_iter = pipeline.training_iterator(config, source, process_index=jax.process_index(),
                                         process_count=jax.process_count())
  console.say(f"data: {source}")
  watching, watch_line = monitor.watch_plan(config)
  console.say(watch_line)  # before the model compiles: what the figures will be of
  discovery_monitor = (monitor.TrainingMonitor(config, workdir)
                       if watching and jax.process_index() == 0 else None)
  model, optimizer, state, state_sharding = state_lib.build(config, mesh)
  manager = checkpoint.make_manager(workdir, config)
  state, data_iter = checkpoint.restore_latest(manager, state, data_iter, set_aside=True)
  steps = step_lib.compile_train_steps(config, model, optimizer, mesh, state_sharding)
  mirror = run_logs.mirror_for(config, workdir)
  writer = loop.MetricWriter(logdir, mirror=mirror)
  start, t = int(state.step), config.train
  console.say(f"{'resuming at' if start else 'starting at'} step {start} of {t.num_steps} on "
              f"{jax.device_count()} device(s) ({microbatches} micro-batch(es) a step); a progress "
              f"line every {t.log_every} steps, "
              f"checkpoints every {t.checkpoint_every} in {manager.directory}")
  stage = loop.Stage(t.num_steps, step_lib.step_schedule(config, steps),
                     functools.partial(progress_line, num_steps=t.num_steps),
                     mesh, manager, writer, discovery_monitor)
  _, scalars = loop.run_loop(config, stage, state, data_iter)
  metrics_dir = workdir if mirror else logdir
  console.say(f"done: step {t.num_steps}; checkpoints in {manager.directory}, metrics in "
              f"{metrics_dir}/{run_logs.METRICS} and {metrics_dir}/{run_logs.TENSORBOARD}")
  return scalars
