"""Shared fixtures: tiny configs and rng helpers."""

import jax
import pytest

from configs import tiny


@pytest.fixture
def tiny_config():
  return tiny.get_config()


def model_rngs(seed: int = 0):
  """The rng streams SMTC needs, keyed by name."""
  keys = jax.random.split(jax.random.PRNGKey(seed), 3)
  return {"params": keys[0], "instance": keys[1], "partner": keys[2]}
