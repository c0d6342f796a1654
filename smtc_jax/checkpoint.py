"""Orbax checkpoints: the train state and the grain iterator together, resume
from the latest, the weights alone (export, evaluation), and init from a params
checkpoint (an export, or a converted PyTorch model)."""

import json
import os
import shutil

from absl import logging
from etils import epath
import flax
import grain
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from smtc_jax import console
from smtc_jax import run_config
from smtc_jax import run_logs

CHECKPOINT_DIR = "checkpoints"
EXPORT_DIR = "export"
UNREADABLE = "unreadable"  # suffix of a checkpoint folder set aside: <step>.unreadable
# Where Orbax moves an old checkpoint (an atomic rename) before it is removed:
# a kill during the removal leaves no part of a step under its step's name.
DELETING = "deleting"


def _resolve(path: str) -> str:
  return path if run_logs.is_remote(path) else os.path.abspath(path)


def make_manager(workdir: str, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  """The training manager; it removes what a killed run left in DELETING."""
  t = config.train
  directory = _resolve(os.path.join(workdir, CHECKPOINT_DIR))
  _remove_deleted(directory)
  options = ocp.CheckpointManagerOptions(
      max_to_keep=t.keep_checkpoints, enable_async_checkpointing=t.async_checkpoints,
      todelete_subdir=DELETING)
  return ocp.CheckpointManager(directory, options=options)


def _remove_deleted(directory) -> None:
  """Remove the old checkpoints moved to DELETING (process 0; on gs:// Orbax
  deletes in place and there is no such folder)."""
  if not run_logs.is_remote(str(directory)) and jax.process_index() == 0:
    shutil.rmtree(os.path.join(directory, DELETING), ignore_errors=True)


def close(manager: ocp.CheckpointManager) -> None:
  """Wait for the last write (which moves the old steps to DELETING), remove
  them, and close the manager."""
  manager.wait_until_finished()
  _remove_deleted(manager.directory)
  manager.close()


def save(manager: ocp.CheckpointManager, step: int, state, data_iter,
         config: ml_collections.ConfigDict) -> None:
  """Save state, data iterator and the run's config as checkpoint `step` (the
  loop decides when). Orbax writes into `<step>.orbax-checkpoint-tmp` and
  renames it when complete, so a save killed half-way never shadows the
  previous checkpoint."""
  manager.wait_until_finished()  # as manager.save would: the previous write moved its old steps
  _remove_deleted(manager.directory)
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iter)),
               force=True, custom_metadata=_config_metadata(config))


def _config_metadata(config) -> dict | None:
  """Orbax custom metadata holding a config (a ConfigDict or its plain dict)."""
  if config is None:
    return None
  trained = config if isinstance(config, dict) else run_config.plain(config)
  return {run_config.CONFIG_KEY: trained}


def stored_config(path) -> dict | None:
  """The config a checkpoint step folder or an export was written with; None
  for one written without (an earlier version, a converted PyTorch model)."""
  metadata = epath.Path(path) / run_config.METADATA_FILE
  if not metadata.exists():
    return None
  custom = json.loads(metadata.read_text()).get("custom_metadata") or {}
  return custom.get(run_config.CONFIG_KEY)


def check_trained_model(path, config) -> None:
  """ConfigMismatch if the weights at `path` were trained under other model
  fields than `config`'s; a warning line if they hold no config to compare."""
  trained = stored_config(path)
  if trained is None:
    logging.warning("%s holds no config (written by an earlier version or converted): its model "
                    "fields cannot be compared with the given config", path)
  else:
    run_config.check_model(trained, config, str(path))


def check_resume(directory: str, config: ml_collections.ConfigDict, compared=None,
                 resumable=run_config.RESUMABLE) -> list[str]:
  """Before a resume from the checkpoints in `directory`: ConfigMismatch if
  any step's config differs from `config` in a `compared` field (None: all)
  outside `resumable`; else the changed resumable fields of the newest step
  ('field=old -> new'). Steps without a readable config are passed over (the
  restore judges them)."""
  root = epath.Path(_resolve(directory))
  if not root.exists():
    return []
  steps = sorted((int(p.name) for p in root.iterdir() if p.name.isdigit()), reverse=True)
  changes = None
  for step in steps:
    try:
      trained = stored_config(root / str(step))
    except (OSError, ValueError):  # damaged metadata: the restore sets the step aside
      continue
    if trained is not None:
      found = run_config.check_resume(trained, config, str(root / str(step)), compared,
                                      resumable)
      changes = found if changes is None else changes
  return changes or []


def restore_latest(manager: ocp.CheckpointManager, state, data_iter=None, *,
                   set_aside: bool = False):
  """(state, data_iter) from the newest checkpoint that reads back, or the given
  ones if there is none. Without `data_iter` only the state is read.

  A newer checkpoint that does not read back (damaged array files, a half-copied
  folder, a damaged iterator file) gets one warning line naming its step and
  why; with `set_aside` (training, which will write that step again) its folder
  is renamed to `<step>.unreadable`. Nothing is deleted. If no checkpoint reads
  back, nothing is renamed and the error names every step: a config that does
  not fit the checkpoints fails on all of them, and setting them all aside
  would silently restart the run.
  """
  found = _newest_readable(manager, lambda step: _restore_step(manager, step, state, data_iter),
                           set_aside=set_aside)
  return (state, data_iter) if found is None else found[1]


def _newest_readable(manager: ocp.CheckpointManager, restore, *, set_aside: bool,
                     above: int | None = None, fallback: str = ""):
  """(step, restore(step)) of the newest step (above `above`, if given) that
  reads back on every process, None if there is no such step; newer unreadable
  steps are reported (and set aside, see restore_latest); if none reads back, a
  ValueError names every step, unless there is a `fallback` (what is read
  instead, named in each step's warning). A ConfigMismatch is raised as it is."""
  failures = []
  steps = [s for s in manager.all_steps() if above is None or s > above]
  for step in sorted(steps, reverse=True):
    try:
      restored, error = restore(step), None
    except run_config.ConfigMismatch:
      raise
    except Exception as e:  # pylint: disable=broad-except  # any damage; reported below
      logging.info("checkpoint step %d does not read back", step, exc_info=e)  # log file only
      restored, error = None, e
    if not _on_every_process(error is None):
      failures.append((step, console.reason(error) if error else "unreadable on another process"))
      continue
    for bad, why in failures:
      _report_unreadable(manager, bad, why, step, set_aside)
    if failures and set_aside:
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices("smtc_jax: unreadable checkpoints set aside")
      manager.reload()
    return step, restored
  if failures and fallback:
    for bad, why in failures:
      _report_unreadable(manager, bad, why, fallback, False)
  elif failures:
    listed = "; ".join(f"step {step}: {why}" for step, why in failures)
    raise ValueError(f"no checkpoint in {manager.directory} reads back ({listed}). If the config "
                     f"changed since they were written, run with the one they were written with "
                     f"({run_config.STORED} in each step's folder; the workdir's config.json); "
                     f"to start afresh, move the folder away")
  return None


def _restore_step(manager: ocp.CheckpointManager, step: int, state, data_iter):
  """(state, data_iter) of one checkpoint step; raises whatever its files raise."""
  logging.info("restoring %s step %d", manager.directory, step)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  items = {"state": ocp.args.StandardRestore(abstract)}
  data_file = _data_state_file(manager, step)
  same_layout = data_iter is not None and data_file.exists()
  if same_layout:
    _check_json(data_file)
    items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  if data_iter is not None and not same_layout:
    _position_iterator(data_iter, step, data_file)
  return restored["state"], restored.get("data", data_iter)


def _check_json(path) -> None:
  """Raise naming the file if grain's iterator state is not valid JSON."""
  try:
    json.loads(path.read_text())
  except ValueError as e:
    raise ValueError(f"{path} is damaged ({e})") from None


def _on_every_process(ok: bool) -> bool:
  """True if `ok` holds on every process (all restore the same step or none)."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


def _report_unreadable(manager: ocp.CheckpointManager, step: int, why: str, resumed,
                       set_aside: bool) -> None:
  """One warning line; with `set_aside`, process 0 renames the step's folder.
  `resumed`: the step used instead, or a description of what is."""
  if set_aside and jax.process_index() == 0:
    logging.warning("checkpoint step %d does not read back (%s): moved to %s; resuming from "
                    "step %d", step, why, _set_aside(manager, step), resumed)
  else:
    used = f"step {resumed}" if isinstance(resumed, int) else resumed
    logging.warning("checkpoint step %d (%s) does not read back (%s); using %s", step,
                    manager.directory / str(step), why, used)


def _set_aside(manager: ocp.CheckpointManager, step: int) -> str:
  """Rename a step's folder to `<step>.unreadable` (`.1`, `.2`, ... if taken),
  which Orbax does not take for a step; returns the new path."""
  target = manager.directory / f"{step}.{UNREADABLE}"
  copy = 0
  while target.exists():
    copy += 1
    target = manager.directory / f"{step}.{UNREADABLE}.{copy}"
  (manager.directory / str(step)).rename(target)
  return str(target)


def _data_state_file(manager: ocp.CheckpointManager, step: int):
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


def export_params(state, directory: str, config=None) -> str:
  """Write weights_of(state) as an Orbax checkpoint; never over an existing one."""
  return export_params_tree(weights_of(state), directory, config)


def latest_step(workdir: str) -> int | None:
  """The step of the workdir's latest checkpoint, None without one."""
  directory = _resolve(os.path.join(workdir, CHECKPOINT_DIR))
  if not run_logs.is_remote(directory) and not os.path.isdir(directory):
    return None
  manager = ocp.CheckpointManager(directory)
  step = manager.latest_step()
  manager.close()
  return step


def latest_weights(workdir: str, abstract_variables, config: ml_collections.ConfigDict,
                   above: int | None = None, fallback: str = "") -> dict | None:
  """The weights_of() tree of the workdir's newest readable checkpoint as numpy
  arrays (newer unreadable ones get a warning line), None without one. Only
  those leaves are read (Orbax partial restore): no optimizer state, data
  iterator or init.checkpoint. abstract_variables: the model's variables as
  shapes ({'params'} and 'batch_stats' if any). A step trained under other
  model fields than `config`'s is a ConfigMismatch, never read. With `above`,
  only newer steps count; with a `fallback`, none readable is None (see
  _newest_readable)."""
  if latest_step(workdir) is None:
    return None
  target = {"params": abstract_variables["params"], "ema_params": abstract_variables["params"],
            "step": jax.ShapeDtypeStruct((), np.int32)}
  if abstract_variables.get("batch_stats"):
    target["batch_stats"] = abstract_variables["batch_stats"]
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
  args = ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item=target, restore_args=restore_args, partial_restore=True))
  manager = ocp.CheckpointManager(_resolve(os.path.join(workdir, CHECKPOINT_DIR)))

  def restore(step):
    check_trained_model(manager.directory / str(step), config)
    return manager.restore(step, args=args)["state"]

  try:
    found = _newest_readable(manager, restore, set_aside=False, above=above, fallback=fallback)
  finally:
    manager.close()
  return None if found is None else found[1]


def export_params_tree(tree, directory: str, config=None) -> str:
  """Write a params tree as an Orbax checkpoint; never over an existing one.
  `config` (a ConfigDict or its stored dict), the config the weights were
  trained under, goes with it (stored_config)."""
  directory = _resolve(directory)
  if not run_logs.is_remote(directory) and os.path.exists(directory):
    raise FileExistsError(f"{directory} exists; remove it or export elsewhere")
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(directory, tree, custom_metadata=_config_metadata(config))
  checkpointer.wait_until_finished()
  return directory


def load_params(directory: str) -> dict:
  """The params tree of an export / converted checkpoint, as numpy arrays."""
  directory = _resolve(directory)
  if not run_logs.is_remote(directory) and not os.path.isdir(directory):
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


INIT_SCOPES = ("encoder", "all")  # init.scope


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
    raise ValueError(f"init.scope must be one of {INIT_SCOPES}, got {scope!r}")
  logging.info("initialised %s parameters from %s", scope, directory)
  return state.replace(params=place(state.params, params), ema_params=place(state.ema_params, params))
