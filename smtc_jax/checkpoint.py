"""Orbax checkpoints: the train state and the grain iterator together, resume
from the latest, the weights alone (export, evaluation), and init from a params
checkpoint (an export, or a converted PyTorch model)."""

import os

from absl import logging
import flax
import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"
EXPORT_DIR = "export"


def is_remote(path: str) -> bool:
  """gs://... and other URLs: written by Orbax (tensorstore), never by os calls."""
  return "://" in path


def _resolve(path: str) -> str:
  return path if is_remote(path) else os.path.abspath(path)


def make_manager(workdir: str, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  t = config.train
  options = ocp.CheckpointManagerOptions(
      max_to_keep=t.keep_checkpoints, enable_async_checkpointing=t.async_checkpoints)
  return ocp.CheckpointManager(_resolve(os.path.join(workdir, CHECKPOINT_DIR)), options=options)


def save(manager: ocp.CheckpointManager, step: int, state, data_iter, *, every: int,
         force: bool = False) -> bool:
  """Save state and data iterator every `every` steps, or when forced."""
  if not (force or step % every == 0):
    return False
  return manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iter)),
                      force=force)


def restore_latest(manager: ocp.CheckpointManager, state, data_iter=None):
  """(state, data_iter) from the latest checkpoint, or the given ones if there is
  none. Without `data_iter` only the state is read."""
  step = manager.latest_step()
  if step is None:
    return state, data_iter
  logging.info("resuming from %s step %d", manager.directory, step)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  items = {"state": ocp.args.StandardRestore(abstract)}
  same_layout = data_iter is not None and _data_state_file(manager, step).exists()
  if same_layout:
    items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  if data_iter is not None and not same_layout:
    _position_iterator(data_iter, step, _data_state_file(manager, step))
  return restored["state"], restored.get("data", data_iter)


def _data_state_file(manager: ocp.CheckpointManager, step: int) -> str:
  """grain's iterator state file of this process for a checkpoint step."""
  name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
  return manager.directory / str(step) / "data" / name


def _position_iterator(data_iter, step: int, missing: str) -> None:
  """Resume with another number of processes than the checkpoint was written
  by: the pipeline is a function of (seed, step), so step s starts at batch s of
  this process's shard. Only the in-process iterator's state is that simple."""
  state = data_iter.get_state()
  if set(state) != {"next_index"}:
    raise ValueError(f"{missing} does not exist: the checkpoint was written by another number of "
                     f"processes; resume once with data.num_workers=0 to re-shard the data")
  logging.warning("%s missing: data iterator positioned from the step (%d)", missing, step)
  data_iter.set_state({"next_index": step})


def weights_of(state) -> dict:
  """What an export holds: 'params' (student), 'ema_params' (teacher),
  'batch_stats' (if any) and 'step'."""
  tree = {"params": state.params, "ema_params": state.ema_params, "step": np.asarray(state.step)}
  if state.batch_stats:
    tree["batch_stats"] = state.batch_stats
  return tree


def export_params(state, directory: str) -> str:
  """Write weights_of(state) as an Orbax checkpoint; never over an existing one."""
  return export_params_tree(weights_of(state), directory)


def latest_step(workdir: str) -> int | None:
  """The step of the workdir's latest checkpoint, None without one."""
  directory = _resolve(os.path.join(workdir, CHECKPOINT_DIR))
  if not is_remote(directory) and not os.path.isdir(directory):
    return None
  manager = ocp.CheckpointManager(directory)
  step = manager.latest_step()
  manager.close()
  return step


def latest_weights(workdir: str, abstract_variables) -> dict | None:
  """The weights_of() tree of the workdir's latest checkpoint as numpy arrays,
  None without one. Only those leaves are read (Orbax partial restore): no
  optimizer state, data iterator or init.checkpoint. abstract_variables: the
  model's variables as shapes ({'params'} and 'batch_stats' if any)."""
  step = latest_step(workdir)
  if step is None:
    return None
  target = {"params": abstract_variables["params"], "ema_params": abstract_variables["params"],
            "step": jax.ShapeDtypeStruct((), np.int32)}
  if abstract_variables.get("batch_stats"):
    target["batch_stats"] = abstract_variables["batch_stats"]
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
  manager = ocp.CheckpointManager(_resolve(os.path.join(workdir, CHECKPOINT_DIR)))
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item=target, restore_args=restore_args, partial_restore=True)))
  manager.close()
  return restored["state"]


def export_params_tree(tree, directory: str) -> str:
  """Write a params tree as an Orbax checkpoint; never over an existing one."""
  directory = _resolve(directory)
  if not is_remote(directory) and os.path.exists(directory):
    raise FileExistsError(f"{directory} exists; remove it or export elsewhere")
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(directory, tree)
  checkpointer.wait_until_finished()
  return directory


def load_params(directory: str) -> dict:
  """The params tree of an export / converted checkpoint, as numpy arrays."""
  directory = _resolve(directory)
  if not is_remote(directory) and not os.path.isdir(directory):
    raise FileNotFoundError(f"params checkpoint {directory} does not exist")
  tree = ocp.StandardCheckpointer().restore(directory)
  return jax.tree.map(np.asarray, tree)


def _check_same_shapes(name: str, expected, given, origin: str) -> None:
  exp = flax.traverse_util.flatten_dict(flax.core.unfreeze(expected), sep="/")
  got = flax.traverse_util.flatten_dict(flax.core.unfreeze(given), sep="/")
  missing = sorted(set(exp) - set(got))
  unknown = sorted(set(got) - set(exp))
  wrong = sorted(k for k in set(exp) & set(got) if tuple(exp[k].shape) != tuple(got[k].shape))
  if missing or unknown or wrong:
    raise ValueError(f"{origin}: {name} does not fit the model: missing {missing[:8]}, "
                     f"unknown {unknown[:8]}, wrong shapes "
                     f"{[(k, tuple(got[k].shape), tuple(exp[k].shape)) for k in wrong[:8]]}")


def _put_like(old, new):
  """`new`'s values with `old`'s dtypes and device shardings."""
  return jax.tree.map(lambda o, n: jax.device_put(np.asarray(n, o.dtype), o.sharding), old, new)


def load_init_params(state, directory: str, scope: str):
  """Replace the student's and teacher's parameters in `scope` ('encoder' or
  'all') by those of a params checkpoint."""
  tree = load_params(directory)
  params = tree.get("params", tree)
  stats = tree.get("batch_stats", {})
  if stats:
    _check_same_shapes("batch_stats", state.batch_stats if scope == "all" else
                       {"encoder": state.batch_stats.get("encoder", {})}, stats, directory)
    state = state.replace(batch_stats={**state.batch_stats, **jax.tree.map(
        lambda new: np.asarray(new, np.float32), stats)})
  if scope == "encoder":
    if "encoder" not in params:
      raise ValueError(f"{directory}: no 'encoder' parameters (top-level keys: {sorted(params)})")
    _check_same_shapes("encoder", state.params["encoder"], params["encoder"], directory)
    place = lambda p, x: {**p, "encoder": _put_like(p["encoder"], x["encoder"])}
  elif scope == "all":
    _check_same_shapes("params", state.params, params, directory)
    place = _put_like
  else:
    raise ValueError(f"init.scope must be 'encoder' or 'all', got {scope!r}")
  logging.info("initialised %s parameters from %s", scope, directory)
  return state.replace(params=place(state.params, params), ema_params=place(state.ema_params, params))
