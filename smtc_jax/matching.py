"""Exact minimum-cost bipartite matching on device for small square matrices.

With P <= 8 instances per semantic, enumerating all P! permutations is cheap,
exact, jit-able and vmap-able, so the train step never leaves the device.
"""

import itertools

import jax.numpy as jnp
import numpy as np

MAX_SIZE = 8  # 8! = 40320 permutations; beyond that enumeration gets expensive.


def permutations(size: int) -> np.ndarray:
  """All permutations of range(size) as a (size!, size) int32 array."""
  return np.asarray(list(itertools.permutations(range(size))), dtype=np.int32)


def bipartite_match(cost):
  """For each row, the column of the minimum-cost assignment.

  cost: (..., P, P) with P <= 8. Returns (..., P) int32 such that
  sum_i cost[..., i, result[..., i]] is minimal (as scipy's linear_sum_assignment).
  """
  p = cost.shape[-1]
  if cost.shape[-2] != p:
    raise ValueError(f"bipartite_match needs square matrices, got {cost.shape[-2:]}")
  if not 1 <= p <= MAX_SIZE:
    raise ValueError(f"bipartite_match enumerates permutations; size {p} is not in 1..{MAX_SIZE}")
  perms = permutations(p)  # (P!, P)
  rows = np.arange(p, dtype=np.int32)[None, :]
  totals = cost[..., rows, perms].sum(axis=-1)  # (..., P!)
  return jnp.asarray(perms)[jnp.argmin(totals, axis=-1)]
