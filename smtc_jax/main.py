"""The one entry point:

  python -m smtc_jax.main --config configs/X.py --workdir DIR
                          [--mode train|pretrain|export|eval|predict]
                          [--config.section.field=value ...] [--alsologtostderr]

train: trains (resuming from DIR's newest readable checkpoint), after pretraining
the encoder when pretrain.num_steps > 0 and no init.checkpoint is given;
pretrain: that encoder pretraining alone (smtc_jax/pretrain.py, into DIR/pretrain);
export: writes the latest checkpoint's student and teacher parameters to
DIR/export (or --export_dir); eval: object discovery and label propagation with
baselines (smtc_jax/evaluation); predict: the objects of one's own video
(predict.input, a video file or a folder of frames) as masks, an overlay video
and a table in predict.output (smtc_jax/predict.py).

The config is checked first (config_checks.py), before anything is built or
written. The console shows the run's own lines, warnings and one line per error;
the full log (library records, tracebacks) goes to <logdir>/<mode>.log, and to
the console as well with --alsologtostderr. With a gs:// workdir, checkpoints
and exports go to the bucket through Orbax, and the logs (written on the host's
disk, in the folder the console names) are copied into it (run_logs.py). A
training job holds the workdir's lock; at SIGTERM it checkpoints the current
step and exits with status 143.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the resolved config.")
flags.DEFINE_enum("mode", "train", ["train", "pretrain", "export", "eval", "predict"],
                  "What to run.")
flags.DEFINE_string("export_dir", None, "Where --mode=export writes (default: WORKDIR/export).")
flags.DEFINE_string("coordinator_address", "", "host:port of process 0 (multi-process GPU runs; "
                    "TPU pods and SLURM are detected automatically).")
flags.DEFINE_integer("num_processes", 0, "Number of processes of a multi-process run.")
flags.DEFINE_integer("process_id", -1, "This process's index in a multi-process run.")
flags.mark_flags_as_required(["config", "workdir"])


def run(config, mode: str, workdir: str) -> None:
  if mode in ("train", "pretrain"):
    from smtc_jax import pretrain, train  # pylint: disable=g-import-not-at-top
    if config.pretrain.num_steps and not config.init.checkpoint:
      config.init.checkpoint = pretrain.run(config, workdir)
    if mode == "train":
      train.train_and_evaluate(config, workdir)
  elif mode == "export":
    from smtc_jax import export  # pylint: disable=g-import-not-at-top
    export.run(config, workdir, FLAGS.export_dir)
  elif mode == "eval":
    from smtc_jax.evaluation import evaluate  # pylint: disable=g-import-not-at-top
    evaluate.evaluate(config, workdir)
  elif mode == "predict":
    from smtc_jax import predict  # pylint: disable=g-import-not-at-top
    predict.run(config, workdir)


def parse_flags(argv):
  """absl flag parsing, with a one-line error for a bad --config override."""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError, TypeError, ValueError, flags.Error) as e:
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    sys.exit(f"error: bad command line ({type(e).__name__}: {e}); config overrides given: "
             f"{overrides or 'none'}. Unknown keys are not accepted: check the field names in "
             f"configs/base.py.")


def main(argv):
  del argv
  config, mode, workdir = FLAGS.config, FLAGS.mode, FLAGS.workdir
  # pylint: disable=g-import-not-at-top
  from smtc_jax import config_checks
  try:
    config_checks.validate(config, mode, workdir)
  except config_checks.ConfigError as e:
    sys.exit("\n".join(f"error: {line}" for line in str(e).splitlines()))
  if mode in ("eval", "predict"):  # before JAX starts its backend, which reads XLA_FLAGS
    from smtc_jax import xla_cpu
    xla_cpu.use_inference_flags()
  import jax
  from smtc_jax import console, preemption, run_logs, sharding, workdir_lock
  # pylint: enable=g-import-not-at-top
  console.start(verbose=FLAGS.alsologtostderr or FLAGS.logtostderr)
  sharding.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  logdir = run_logs.local_dir(config, workdir)
  lock = None  # held while this process lives
  try:  # the first writes: a folder the checks passed may still refuse them (a read-only disk)
    if mode in ("train", "pretrain") and jax.process_index() == 0:
      lock = workdir_lock.acquire(logdir if run_logs.is_remote(workdir) else workdir)
    mirror = run_logs.mirror_for(config, workdir)  # a gs:// workdir: logs copied into it
    if mirror:  # a resume on a fresh host appends to the bucket's metrics and log
      mirror.pull(([run_logs.METRICS] if jax.process_index() == 0 else []) +
                  [os.path.basename(console.log_path(logdir, mode))])
    log_file = console.to_file(logdir, mode)
  except workdir_lock.WorkdirBusy as e:
    sys.exit(f"error: {e}")
  except OSError as e:
    sys.exit(f"error: cannot write {e.filename or logdir}: {e.strerror or e}")
  console.say(f"smtc_jax {mode}: workdir {workdir}; full log in {log_file}")
  if mirror:
    console.say(f"logs, metrics and TensorBoard are written to {logdir} and copied into {workdir} "
                f"every {run_logs.COPY_EVERY_S:.0f} s and at the end")
  logging.info("config:\n%s", config)
  try:
    run(config, mode, workdir)
  except preemption.Preempted as e:
    console.say(str(e))
    sys.exit(preemption.EXIT_CODE)
  except Exception as e:  # pylint: disable=broad-except  # one line here, traceback in the log
    logging.error("%s (traceback in %s)", console.reason(e), log_file, exc_info=e)
    sys.exit(1)
  finally:
    if mirror:
      mirror.push(force=True)
  del lock


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
