"""What a run prints, and where everything else goes.

The console gets the run's own lines (where the outputs are, progress with ETA,
the result), warnings, and one line per error. Every log record, the libraries'
INFO records among them, goes to a log file in the log dir (`<mode>.log`),
with tracebacks; absl's `--alsologtostderr` puts them on the console too.
"""

import logging
import logging.handlers
import os
import sys

from absl import logging as absl_logging
import jax

# Library internals whose records go to the log file only: Orbax's step-by-step
# warnings (a leftover temporary folder, a missing metadata file) and asyncio's
# "Task exception was never retrieved" of a failed checkpoint read; the run
# reports what they mean in its own words.
FILE_ONLY = (f"{os.sep}orbax{os.sep}", f"{os.sep}asyncio{os.sep}")


def _unraisable(args) -> None:
  """sys.unraisablehook: a read of a damaged checkpoint fails inside Orbax's
  asyncio loop, which closes while TensorStore reads are still in flight; as
  they finish, their callbacks find the loop closed and raise where nobody can
  catch it ("Event loop is closed", dozens of tracebacks). Those go to the log
  file only; every other unraisable exception is printed as Python would."""
  if isinstance(args.exc_value, RuntimeError) and "Event loop is closed" in str(args.exc_value):
    logging.getLogger(__name__).info(
        "ignored in a TensorStore callback", exc_info=(args.exc_type, args.exc_value,
                                                       args.exc_traceback))
  else:
    sys.__unraisablehook__(args)


class _ConsoleFilter(logging.Filter):

  def filter(self, record: logging.LogRecord) -> bool:
    return not any(part in record.pathname for part in FILE_ONLY)


class _ConsoleFormatter(logging.Formatter):
  """`warning: message`, one line: tracebacks stay in the log file."""

  def format(self, record: logging.LogRecord) -> str:
    return f"{record.levelname.lower()}: {record.getMessage()}"


def log_path(logdir: str, mode: str) -> str:
  """The log file of a mode; processes other than 0 write their own."""
  index = jax.process_index()
  return os.path.join(logdir, f"{mode}.log" if index == 0 else f"{mode}.process_{index}.log")


def start(verbose: bool = False) -> None:
  """Replace absl's stderr handler: warnings and errors on the console, one
  line each (everything, absl-formatted, with `verbose`); every record from
  here on is kept for the log file that `to_file` opens."""
  to_console = logging.StreamHandler(sys.stderr)
  if verbose:
    to_console.setFormatter(absl_logging.PythonFormatter())
    to_console.setLevel(logging.INFO)
  else:
    to_console.setFormatter(_ConsoleFormatter())
    to_console.setLevel(logging.WARNING)
    to_console.addFilter(_ConsoleFilter())
  root = logging.getLogger()
  for handler in list(root.handlers):
    if isinstance(handler, absl_logging.ABSLHandler):
      root.removeHandler(handler)
  root.addHandler(to_console)
  root.addHandler(logging.handlers.MemoryHandler(capacity=1 << 16, flushLevel=logging.CRITICAL + 1))
  sys.unraisablehook = _unraisable


def to_file(logdir: str, mode: str) -> str:
  """Write every record (INFO and up) to the mode's log file in `logdir`,
  those kept since `start` first. Returns the file's path."""
  os.makedirs(logdir, exist_ok=True)
  path = log_path(logdir, mode)
  handler = logging.FileHandler(path)
  handler.setFormatter(absl_logging.PythonFormatter())
  handler.setLevel(logging.INFO)
  root = logging.getLogger()
  for kept in [h for h in root.handlers if isinstance(h, logging.handlers.MemoryHandler)]:
    kept.setTarget(handler)
    kept.close()  # flushes into the file
    root.removeHandler(kept)
  root.addHandler(handler)
  return path


def say(message: str) -> None:
  """A line of the run's own on the console (process 0) and in the log file."""
  absl_logging.info("%s", message)
  if jax.process_index() == 0:
    print(message, flush=True)


def reason(error: BaseException, limit: int = 300) -> str:
  """`Type: first line` of an error's root cause, at most `limit` characters.
  TensorStore's messages run to pages: a chain "what: where: why" and then the
  whole spec; the spec goes, and a long chain keeps its head and its tail."""
  while error.__cause__ is not None:
    error = error.__cause__
  message = error.args[0] if isinstance(error, KeyError) and error.args else error  # no repr quotes
  text = str(message).strip().splitlines()
  first = (text[0] if text else "").split(" [tensorstore_spec")[0]
  if len(first) > limit:
    first = f"{first[:limit // 2]} ... {first[-limit // 2:]}"
  return f"{type(error).__name__}: {first}"
