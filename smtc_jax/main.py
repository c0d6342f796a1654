"""The one entry point: python -m smtc_jax.main --config configs/X.py --workdir DIR.

Modes: demo (a forward pass of the configured model on a random clip).
"""

import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the resolved config.")
flags.DEFINE_enum("mode", "demo", ["demo"], "What to run.")
flags.mark_flags_as_required(["config", "workdir"])


def run_demo(config, workdir: str) -> None:
  """Forward one random clip through the configured model and print the shapes."""
  import jax  # pylint: disable=g-import-not-at-top
  from smtc_jax.models import smtc  # pylint: disable=g-import-not-at-top

  model = smtc.build_model(config)
  d = config.data
  clip = jax.random.normal(jax.random.PRNGKey(config.seed), (1, d.num_frames, *d.resolution, 3))
  rngs = dict(zip(("params", "instance", "partner"), jax.random.split(jax.random.PRNGKey(0), 3)))
  variables = jax.jit(model.init)(rngs, clip)
  out = jax.jit(model.apply)(variables, clip, rngs=rngs)
  for name, value in sorted(out.items()):
    print(f"{name:16s} {tuple(value.shape)}")
  os.makedirs(workdir, exist_ok=True)


def main(argv):
  del argv
  logging.info("config:\n%s", FLAGS.config)
  if FLAGS.mode == "demo":
    run_demo(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
