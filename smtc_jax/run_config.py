"""The config weights were trained under, and what may differ from it.

Every checkpoint and export stores its run's config (checkpoint.py). Before
weights are read, the given config is compared with it: evaluation and export
compare the fields that define what the weights compute (model_fields); a
resume compares every field but those that may change between the runs of
one training (RESUMABLE), and names those that did. A difference is one
ConfigMismatch line naming each field with both values and where the trained
config is stored.
"""

import json
import os

import ml_collections

# How the ViT's attention is computed (the same function on any backend).
ATTENTION_FIELDS = ("model.vit.attention", "model.vit.attention_pad", "model.vit.attention_block")
# Model fields that change how weights are trained or stored, not what they
# compute: ignored when weights are evaluated or exported.
INFERENCE_FREE = ("model.dtype", "model.remat", "model.sample_grad", "model.detach_trick",
                  "model.vit.drop_path_rate", *ATTENTION_FIELDS)
# Outside the model section, what the weights were fitted to: the input normalisation.
INPUT_FIELDS = ("data.mean", "data.std")
# Fields (or sections, ending in '.') that may change when a training resumes:
# length, logging, checkpointing, memory, input workers and paths, the watch,
# evaluation and prediction, and what is read only before the first step.
RESUMABLE = ("train.num_steps", "train.log_every", "train.checkpoint_every",
             "train.keep_checkpoints", "train.async_checkpoints", "train.logdir",
             "train.eval_every", "train.eval_videos", "train.eval_resolution", "train.microbatch",
             "model.remat", *ATTENTION_FIELDS, "data.num_workers", "data.prefetch", "data.path",
             "data.tfds_data_dir", "eval.", "init.", "pretrain.", "predict.")
# What the encoder pretraining stage reads (its resume and the reuse of its
# export compare these alone): the encoder, the data and its own section.
PRETRAIN_FIELDS = ("seed", "model.encoder", "model.vit.", "model.resnet.", "model.dtype", "data.",
                   "pretrain.", "optim.final_lr_ratio")
# Of those, what may differ when its export is reused, and when it resumes (its
# length too, like train.num_steps).
PRETRAIN_REUSABLE = tuple(f for f in RESUMABLE if f != "pretrain.")
PRETRAIN_RESUMABLE = (*PRETRAIN_REUSABLE, "pretrain.num_steps")
METADATA_FILE = "_CHECKPOINT_METADATA"  # Orbax's metadata file of a checkpoint or export folder
CONFIG_KEY = "config"  # the config's key in that file's custom_metadata
STORED = f"custom_metadata.{CONFIG_KEY} of {METADATA_FILE}"
MAX_NAMED = 6  # differing fields named in one line; the rest counted


class ConfigMismatch(ValueError):
  """Weights trained under a config that differs from the given one."""


def plain(config: ml_collections.ConfigDict) -> dict:
  """The config as JSON values (tuples as lists): what is stored and compared."""
  return json.loads(config.to_json_best_effort())


def flat(tree: dict, prefix: str = "") -> dict:
  """{'section.field': value} of a nested dict."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _matches(field: str, patterns) -> bool:
  return any(field == p or (p.endswith(".") and field.startswith(p)) for p in patterns)


def is_model_field(field: str) -> bool:
  """Whether `field` defines what trained weights compute."""
  return ((field.startswith("model.") and field not in INFERENCE_FREE)
          or field in INPUT_FIELDS)


def differences(trained: dict, given: dict, keep) -> list[tuple[str, object, object]]:
  """(field, trained value, given value) of the fields `keep(field)` selects that
  differ, sorted by field. Only fields both configs have are compared: a field
  added later defaults to the behaviour it did not yet have a name for."""
  a, b = flat(trained), flat(given)
  return [(f, a[f], b[f]) for f in sorted(set(a) & set(b)) if keep(f) and a[f] != b[f]]


def describe(diffs, limit: int = MAX_NAMED) -> str:
  """'model.fusion: trained 'paper', given 'reference'; ...' of differences()."""
  named = [f"{f}: trained {t!r}, given {g!r}" for f, t, g in diffs[:limit]]
  more = f" and {len(diffs) - limit} more" if len(diffs) > limit else ""
  return "; ".join(named) + more


def check_model(trained: dict, config: ml_collections.ConfigDict, where: str) -> None:
  """Raise ConfigMismatch if the model fields of `config` differ from those the
  weights at `where` were trained under (`trained`)."""
  diffs = differences(trained, plain(config), is_model_field)
  if diffs:
    raise ConfigMismatch(f"the weights in {where} were trained under another model config: "
                         f"{describe(diffs)}; nothing evaluated or exported. Run with the "
                         f"trained values (their whole config: {STORED} in {where})")


def check_resume(trained: dict, config: ml_collections.ConfigDict, where: str,
                 compared=None, resumable=RESUMABLE) -> list[str]:
  """The 'field=old -> new' lines of the `resumable` fields that changed since
  the checkpoint at `where`; ConfigMismatch if any other field changed.
  `compared`: the fields (or sections, ending in '.') the stage reads; None: all."""
  diffs = differences(trained, plain(config),
                      lambda f: compared is None or _matches(f, compared))
  refused = [d for d in diffs if not _matches(d[0], resumable)]
  if refused:
    raise ConfigMismatch(f"{where} was trained under another config: {describe(refused)}; "
                         f"not resumed. Resume with the trained values (their whole config: "
                         f"{STORED} in {where}), or start afresh in another workdir")
  return [f"{f}={t!r} -> {g!r}" for f, t, g in diffs]




def save(config: ml_collections.ConfigDict, logdir: str) -> str:
  """Write the config as logdir/config.json, or if that holds another config
  as config.<n>.json (the next free n): an earlier run's file is never
  overwritten. A config already written under one of those names is not written
  again. Returns the file that holds it."""
  text = json.dumps(plain(config), indent=2)
  for n in range(10_000):
    path = os.path.join(logdir, "config.json" if n == 0 else f"config.{n}.json")
    if not os.path.exists(path):
      with open(path, "x") as f:
        f.write(text)
      return path
    with open(path) as f:
      try:
        if json.load(f) == json.loads(text):
          return path
      except ValueError:  # a damaged file is kept as it is
        pass
  raise FileExistsError(f"{logdir} holds 10000 config files; move some away")
