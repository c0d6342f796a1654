"""--mode=export: the newest readable checkpoint's weights alone (student,
teacher, step), with the config they were trained under, for evaluation and for
init.checkpoint. A module of its own, without flags, so that library code and
tests can run it."""

import os

from smtc_jax import checkpoint, console
from smtc_jax.models import smtc


def run(config, workdir: str, export_dir: str | None = None) -> str:
  """Writes the export (default WORKDIR/export) and returns its folder; refused
  (ConfigMismatch) if the checkpoint's config differs from `config` in a model
  field."""
  abstract = smtc.abstract_variables(config, smtc.build_model(config))
  weights = checkpoint.latest_weights(workdir, abstract, config)
  if weights is None:
    raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, checkpoint.CHECKPOINT_DIR)}")
  trained = checkpoint.stored_config(
      os.path.join(workdir, checkpoint.CHECKPOINT_DIR, str(int(weights["step"]))))
  out = checkpoint.export_params_tree(weights, export_dir or
                                      os.path.join(workdir, checkpoint.EXPORT_DIR), trained)
  console.say(f"exported step {int(weights['step'])} to {out}")
  return out
