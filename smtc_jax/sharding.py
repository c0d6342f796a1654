"""Device mesh and shardings: a one-axis ('data') mesh over all devices, the
batch split over it, parameters replicated (data parallelism). The same code
runs on 1 CPU, simulated CPU devices, GPUs and TPU slices."""

import os

from absl import logging
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
  """The mesh of `devices` (default: all of them), in order, on the data axis."""
  return Mesh(np.asarray(jax.devices() if devices is None else devices).reshape(-1),
              (DATA_AXIS,))


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


def initialize_distributed(coordinator_address: str = "", num_processes: int = 0,
                           process_id: int = -1) -> None:
  """Start JAX's multi-host runtime when the job runs as several processes.

  Explicit arguments (or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
  JAX_PROCESS_ID) win; otherwise TPU pods (TPU_WORKER_HOSTNAMES lists several
  hosts) and SLURM jobs of several tasks are auto-detected by JAX itself. A
  single process does nothing.
  """
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
  num_processes = num_processes or int(os.environ.get("JAX_NUM_PROCESSES", "0"))
  if process_id < 0:
    process_id = int(os.environ.get("JAX_PROCESS_ID", "-1"))
  if coordinator_address or num_processes > 1:
    if not (coordinator_address and num_processes > 0 and process_id >= 0):
      raise ValueError("multi-process run needs all of coordinator address, number of processes "
                       f"and process id; got {coordinator_address!r}, {num_processes}, {process_id}")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif len(os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1:
    jax.distributed.initialize()  # TPU pod slice: everything from the TPU metadata
  elif int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    jax.distributed.initialize()  # SLURM: JAX reads the SLURM_* variables
  else:
    return
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
