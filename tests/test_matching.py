import jax
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from smtc_jax.matching import bipartite_match


@pytest.mark.parametrize("size", [2, 3, 4, 5, 6])
def test_bipartite_match_equals_scipy_on_1000_random_matrices(size):
  rng = np.random.default_rng(size)
  cost = rng.normal(size=(1000, size, size)).astype(np.float32)
  ours = np.asarray(jax.jit(bipartite_match)(cost))
  reference = np.stack([linear_sum_assignment(c)[1] for c in cost])
  np.testing.assert_array_equal(ours, reference)


def test_bipartite_match_keeps_leading_batch_axes():
  cost = np.random.default_rng(0).normal(size=(2, 3, 5, 4, 4))
  assert bipartite_match(cost).shape == (2, 3, 5, 4)


def test_bipartite_match_rejects_non_square_and_large_matrices():
  with pytest.raises(ValueError, match="square"):
    bipartite_match(np.zeros((3, 4)))
  with pytest.raises(ValueError, match="size 9"):
    bipartite_match(np.zeros((9, 9)))
