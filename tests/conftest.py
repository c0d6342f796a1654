"""Shared fixtures: tiny configs and rng helpers; one XLA compilation cache."""

import os
import shutil
import tempfile

import jax
import pytest

from configs import tiny

OWNED_CACHE = pytest.StashKey[str]()  # the cache folder this run made (and removes)
CACHE_ENV = {  # JAX reads these at import, in the workers and the jobs tests start
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}


def pytest_configure(config):
  """Every test process and every job a test starts share one persistent XLA
  compilation cache (a temporary folder, unless JAX_COMPILATION_CACHE_DIR names
  one): the same tiny programs are otherwise compiled again in each of them."""
  if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="smtc_jax_xla_cache_")
    config.stash[OWNED_CACHE] = os.environ["JAX_COMPILATION_CACHE_DIR"]
  for key, value in CACHE_ENV.items():
    os.environ.setdefault(key, value)
  # This process imported jax before the variables were set.
  jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
  jax.config.update("jax_persistent_cache_min_compile_time_secs",
                    float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
  jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                    int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]))


def pytest_unconfigure(config):
  owned = config.stash.get(OWNED_CACHE, None)
  if owned:
    shutil.rmtree(owned, ignore_errors=True)


@pytest.fixture
def tiny_config():
  return tiny.get_config()


def model_rngs(seed: int = 0):
  """The rng streams SMTC needs, keyed by name."""
  keys = jax.random.split(jax.random.PRNGKey(seed), 3)
  return {"params": keys[0], "instance": keys[1], "partner": keys[2]}
