"""XLA:CPU settings for inference (--mode=eval, --mode=predict, bench eval/propagate).

XLA:CPU hands attention-shaped work (a matmul with the softmax around it) to
YNNPACK fusions, which run on one thread: at inference sizes (thousands of
tokens a frame) the encoder then keeps one core of two busy. Without them the
same ops run as XLA's own threaded kernels, 1.2-1.45x faster on 2-core hosts
(docs/performance.md); the results differ from the fused ones only in float
rounding (~1e-6 relative). Training keeps XLA's defaults. A user's own setting
of the flag in XLA_FLAGS is kept.
"""

import os

from absl import logging

YNN_FUSIONS = "--xla_cpu_experimental_ynn_fusion_type"
INFERENCE_FLAGS = f"{YNN_FUSIONS}="  # an empty list: no YNNPACK fusions


def backend_started() -> bool:
  """Whether JAX has created a backend (XLA reads XLA_FLAGS once, at that point)."""
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  return bool(xla_bridge._backends)  # pylint: disable=protected-access


def use_inference_flags() -> bool:
  """Add INFERENCE_FLAGS to XLA_FLAGS unless the user set the flag or a backend
  already runs; returns whether they are in effect."""
  flags = os.environ.get("XLA_FLAGS", "")
  if YNN_FUSIONS in flags:
    return INFERENCE_FLAGS in flags.split()
  if backend_started():
    logging.warning("XLA:CPU inference flags not set: JAX's backend already started")
    return False
  os.environ["XLA_FLAGS"] = f"{flags} {INFERENCE_FLAGS}".strip()
  return True
