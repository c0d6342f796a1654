"""The untrained model's per-video scores, kept between evaluations
(eval.reuse_untrained).

The untrained model is the same for every run of a seed and model config, so
its scores on a video are the same in every evaluation of those runs: computing
them once halves the model's forward passes of every later evaluation. An entry
is keyed by everything the scores depend on: the fields that build and run the
model and its inference, the seed, the video's content, this package's source
and the JAX/XLA build; anything else changed means a new entry, never a stale one.
Entries live in $SMTC_JAX_CACHE/untrained, by default $XDG_CACHE_HOME/smtc_jax/untrained
(~/.cache/smtc_jax/untrained).
"""

import hashlib
import json
import os
import tempfile

from absl import logging
import jax
import jaxlib
import ml_collections
import numpy as np

CACHE_ENV = "SMTC_JAX_CACHE"  # this package's cache folder, if not the user's default
# Fields that do not change the untrained model's scores: training, its weights'
# choice, what is drawn or printed, and how many videos (each is its own entry).
IGNORED = ("train", "optim", "pretrain", "predict", "init", "eval.params", "eval.overlays",
           "eval.max_videos", "eval.paper_inference", "eval.data_path", "eval.reuse_untrained")
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cache_root() -> str:
  package = os.environ.get(CACHE_ENV) or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
      "smtc_jax")
  return os.path.join(package, "untrained")


def source_digest() -> str:
  """sha256 of this package's Python sources: new code, new entries."""
  h = hashlib.sha256()
  for folder, dirs, files in sorted(os.walk(_PACKAGE)):
    dirs.sort()
    for name in sorted(f for f in files if f.endswith(".py")):
      path = os.path.join(folder, name)
      h.update(os.path.relpath(path, _PACKAGE).encode())
      with open(path, "rb") as f:
        h.update(f.read())
  return h.hexdigest()


def config_key(config: ml_collections.ConfigDict) -> str:
  """sha256 of what the untrained model's scores depend on besides the video."""
  fields = config.to_dict()
  for name in IGNORED:
    *parents, leaf = name.split(".")
    node = fields
    for parent in parents:
      node = node.get(parent, {})
    node.pop(leaf, None)
  build = {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
           "backend": jax.default_backend(), "xla_flags": os.environ.get("XLA_FLAGS", "")}
  text = json.dumps({"config": fields, "build": build, "source": source_digest()},
                    sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()


def video_digest(video) -> str:
  """sha256 of a readers.Video's name, frames and ground truth."""
  h = hashlib.sha256(video.name.encode())
  for field in ("frames", "annotated", "labels", "unsupervised_labels", "keypoints"):
    value = getattr(video, field)
    h.update(field.encode())
    if value is not None:
      array = np.ascontiguousarray(value)
      h.update(f"{array.dtype}{array.shape}".encode())
      h.update(array.tobytes())
  return h.hexdigest()


def flatten(values: dict) -> dict[str, np.ndarray]:
  """scores.Scores.add's values -> named arrays: iou/pck/miou as they are, a J&F
  entry's per-object J and F arrays as '<key>/j/<k>' and '<key>/f/<k>'."""
  out = {}
  for key, value in values.items():
    if isinstance(value, tuple):  # (J, F): per object, per frame
      for part, arrays in zip("jf", value):
        out.update({f"{key}/{part}/{k}": np.asarray(a) for k, a in enumerate(arrays)})
        out[f"{key}/{part}/count"] = np.asarray(len(arrays))
    else:
      out[key] = np.asarray(value)
  return out


def unflatten(arrays: dict[str, np.ndarray]) -> dict:
  """The inverse of flatten."""
  out = {}
  for name, array in arrays.items():
    key, *rest = name.split("/")
    if not rest:
      out[key] = float(array) if array.ndim == 0 else array
    elif rest == ["j", "count"]:
      out[key] = tuple([arrays[f"{key}/{part}/{k}"] for k in range(int(arrays[f"{key}/{part}/count"]))]
                       for part in "jf")
  return out


class ScoreCache:
  """Per-video scores under one config key; `get` returns None when the video's
  entry is missing, unreadable or of another content."""

  def __init__(self, config: ml_collections.ConfigDict, root: str | None = None):
    self.folder = os.path.join(root or cache_root(), config_key(config)[:32])

  def _path(self, video) -> str:
    return os.path.join(self.folder, f"{video.name}.npz")

  def get(self, video) -> dict | None:
    try:
      with np.load(self._path(video)) as stored:
        arrays = {k: stored[k] for k in stored.files}
    except (OSError, ValueError, EOFError):
      return None
    if str(arrays.pop("__video__", "")) != video_digest(video):
      return None
    return unflatten(arrays)

  def put(self, video, values: dict) -> None:
    """Written to a temporary file and renamed: a killed write leaves no entry.
    A folder that cannot be written costs the reuse, not the evaluation: a warning."""
    try:
      os.makedirs(self.folder, exist_ok=True)
      with tempfile.NamedTemporaryFile(dir=self.folder, suffix=".npz", delete=False) as f:
        np.savez(f, __video__=np.asarray(video_digest(video)), **flatten(values))
      os.replace(f.name, self._path(video))
    except OSError as e:
      logging.warning("untrained scores of %s not kept in %s: %s", video.name, self.folder, e)
