"""SIGTERM as a preemption notice: finish the step, checkpoint, exit.

Cloud TPU pods, spot VMs, SLURM and Kubernetes send SIGTERM some time before
they take a machine. With several processes JAX's preemption sync manager
(started by jax.distributed.initialize) catches the signal on any process and
makes every process reach the same sync step, so all save the same checkpoint;
a single process catches it itself. Further SIGTERMs while the checkpoint is
written change nothing.
"""

import signal

import jax
from jax.experimental import multihost_utils

# 128 + SIGTERM, the status of a job ended by SIGTERM: schedulers see an
# interrupted job (to be restarted), not a finished one.
EXIT_CODE = 128 + signal.SIGTERM


class Preempted(Exception):
  """Training stopped at a preemption notice after saving a checkpoint."""


class Watch:
  """`reached(step)` is True at the step where every process stops for a notice."""

  def __init__(self):
    self.multi_process = jax.process_count() > 1
    self.requested = False
    if not self.multi_process:
      signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    self.requested = True

  def reached(self, step: int) -> bool:
    """Call once per step, with the same step on every process."""
    if self.multi_process:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def close(self) -> None:
    """Give SIGTERM its default action back."""
    if not self.multi_process:
      signal.signal(signal.SIGTERM, signal.SIG_DFL)
