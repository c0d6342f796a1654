"""One training job per workdir.

The lock is an flock on `<dir>/train.lock`: the kernel drops it when the job's
process ends, however it ends (SIGKILL included), so a dead job never leaves it
stuck; the file itself stays and says who held it last. It works on local disks
and on NFS (Linux emulates flock with NFS byte-range locks); a remote (gs://)
workdir is locked through its local log dir instead.
"""

import datetime
import fcntl
import os
import socket

LOCK_FILE = "train.lock"


class WorkdirBusy(RuntimeError):
  """Another live job holds the workdir."""


def acquire(directory: str):
  """Hold `directory`'s lock for the life of this process; returns the open lock
  file (keep it referenced). Raises WorkdirBusy naming the holder."""
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, LOCK_FILE)
  handle = open(path, "a+")  # not truncated before we hold it: the holder's line stays readable
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    handle.seek(0)
    holder = handle.read().strip() or "another process"
    handle.close()
    raise WorkdirBusy(f"{directory} is in use by a live training job ({holder}); stop it or "
                      f"choose another --workdir") from None
  handle.seek(0)
  handle.truncate()
  started = datetime.datetime.now().isoformat(timespec="seconds")
  handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n")
  handle.flush()
  return handle
