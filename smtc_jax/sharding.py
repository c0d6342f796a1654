"""Device mesh and shardings: a ('data', 'model') mesh over all devices, the
batch split over 'data', parameters replicated. The same code runs on 1 CPU,
simulated CPU devices, GPUs and TPU slices."""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
MODEL_AXIS = "model"


def make_mesh(devices=None, model_parallelism: int = 1) -> Mesh:
  """Mesh of shape (num_devices / model_parallelism, model_parallelism)."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  if devices.size % model_parallelism:
    raise ValueError(f"{devices.size} devices do not split into model axis {model_parallelism}")
  return Mesh(devices.reshape(-1, model_parallelism), (DATA_AXIS, MODEL_AXIS))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data'."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_divisible(global_batch: int, mesh: Mesh) -> None:
  size = mesh.shape[DATA_AXIS]
  if global_batch % size:
    raise ValueError(f"data.batch_size={global_batch} is not divisible by the {size} devices "
                     f"of the mesh's data axis")


def global_batch(local_batch, mesh: Mesh):
  """Assemble per-process numpy batches into global arrays sharded over 'data'."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
