"""Where a run's logs go when its workdir is a bucket (gs://).

Every log is written on the host's own disk first: the text log (`<mode>.log`)
is a growing file that an object store cannot append to, and TensorBoard and
metrics.jsonl are appended at every progress line, which must not wait on the
network. With a gs:// workdir that local folder is train.logdir, or by default
one under the temp dir named after the workdir (the console names it at
start-up), and its logs are copied into the workdir, beside the checkpoints,
at most every COPY_EVERY_S seconds while training and once more when the job
ends (preemption included). A pod user then finds everything of a run in the
bucket, `tensorboard --logdir gs://BUCKET/run/tensorboard` works from any
machine, and nothing is lost when the slice and its disks are deleted.

Process 0 copies config.json (and later runs' config.<n>.json), metrics.jsonl,
TensorBoard's event files and its text logs; every other process copies only its own text log
(`<mode>.process_<i>.log`). A run resumed on a fresh host first copies the
bucket's metrics.jsonl and its text log back, so it appends to them instead of
replacing them. A failed copy is one warning line: the run goes on.
"""

import functools
import os
import re
import tempfile
import time

from absl import logging
import jax

COPY_EVERY_S = 60.0
LOCAL_ROOT = "smtc_jax_logs"  # under the temp dir: the default local folder of a gs:// workdir
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
_OTHER_PROCESS_LOG = re.compile(r".*\.process_\d+\.log$")
_CONFIGS = re.compile(r"^config(\.\d+)?\.json$")  # config.json and later runs' config.<n>.json


def is_remote(path: str) -> bool:
  """gs://... and other URLs: written through Orbax (tensorstore) or gcsfs, never
  by os calls."""
  return "://" in path


def local_dir(config, workdir: str) -> str:
  """The local folder of this host's logs: train.logdir if set, else the
  workdir when it is local, else <temp>/smtc_jax_logs/<scheme>/<bucket>/<path>."""
  if config.train.logdir:
    return config.train.logdir
  if not is_remote(workdir):
    return workdir
  return os.path.join(tempfile.gettempdir(), LOCAL_ROOT, *workdir.replace("://", "/").split("/"))


def _own_log(name: str, process_index: int) -> bool:
  """Whether `name` (a file at the folder's top) is a text log of this process."""
  if not name.endswith(".log"):
    return False
  if process_index == 0:
    return not _OTHER_PROCESS_LOG.match(name)
  return name.endswith(f".process_{process_index}.log")


class Mirror:
  """Copies a local log folder's run logs into a remote workdir (see the module
  docstring for what, when and by which process)."""

  def __init__(self, local: str, remote: str, process_index: int | None = None):
    self.local, self.remote = local, remote.rstrip("/")
    self.process_index = jax.process_index() if process_index is None else process_index
    self._copied = {}  # relative path -> (size, mtime) when last copied
    self._last = 0.0
    self._warned = False

  def files(self) -> list[str]:
    """This process's logs in the local folder, as paths relative to it."""
    if not os.path.isdir(self.local):
      return []
    out = [n for n in sorted(os.listdir(self.local))
           if os.path.isfile(os.path.join(self.local, n)) and _own_log(n, self.process_index)]
    if self.process_index == 0:
      out += [n for n in sorted(os.listdir(self.local)) if n == METRICS or _CONFIGS.match(n)]
      for top, _, names in os.walk(os.path.join(self.local, TENSORBOARD)):
        out += sorted(os.path.relpath(os.path.join(top, n), self.local) for n in names)
    return out

  def pull(self, names) -> None:
    """Copy `names` (relative paths) from the workdir to the local folder where
    the workdir has them and the local folder does not (a resume on a fresh host)."""
    from etils import epath  # pylint: disable=g-import-not-at-top  # gcsfs behind it: only when remote
    for name in names:
      path = os.path.join(self.local, name)
      if os.path.exists(path):
        continue
      try:
        source = epath.Path(f"{self.remote}/{name}")
        if source.exists():
          os.makedirs(os.path.dirname(path), exist_ok=True)
          with open(path, "wb") as f:
            f.write(source.read_bytes())
      except Exception as e:  # pylint: disable=broad-except  # logs never stop a run
        self._warn("read", f"{self.remote}/{name}", e)

  def push(self, force: bool = False) -> None:
    """Copy what changed since the last copy; without `force`, at most every
    COPY_EVERY_S seconds."""
    if not force and time.time() - self._last < COPY_EVERY_S:
      return
    self._last = time.time()
    from etils import epath  # pylint: disable=g-import-not-at-top
    for name in self.files():
      path = os.path.join(self.local, name)
      stat = os.stat(path)
      if self._copied.get(name) == (stat.st_size, stat.st_mtime_ns):
        continue
      target = f"{self.remote}/{name}"
      try:
        with open(path, "rb") as f:
          data = f.read()
        epath.Path(target).write_bytes(data)  # an object store needs no parent folders
        self._copied[name] = (stat.st_size, stat.st_mtime_ns)
      except Exception as e:  # pylint: disable=broad-except  # logs never stop a run
        self._warn("write", target, e)

  def _warn(self, what: str, where: str, error: Exception) -> None:
    """One warning line for the first failure (the log file gets each one)."""
    message = f"could not {what} the run's logs at {where} ({type(error).__name__}: {error})"
    if self._warned:
      logging.info("%s", message)
    else:
      logging.warning("%s; the local copies in %s are complete", message, self.local)
      self._warned = True


@functools.lru_cache(maxsize=None)
def _mirror(local: str, remote: str) -> Mirror:
  return Mirror(local, remote)


def mirror_for(config, workdir: str) -> Mirror | None:
  """The Mirror of a remote workdir's logs (one per folder pair in a process, so
  the job's and the training loop's copies share what was already copied),
  None for a local workdir."""
  return _mirror(local_dir(config, workdir), workdir) if is_remote(workdir) else None
