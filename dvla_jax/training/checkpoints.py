"""Checkpoints: an orbax CheckpointManager with three named items per step.

Items:
  train_state: the learner's full state (params, optimizer state, step counters); any
    pytree of arrays, including `flax.nnx.State` and optax states.
  params: the policy parameters alone, so that inference and evaluation restore only what
    they need.
  metadata: JSON with the step, env steps, the config as a dict and a format version.

Saving is asynchronous: `save` returns once the arrays are copied off the devices and the
write continues in the background; `wait` blocks until it is on disk. In a multi-process
run every process calls `save` and `restore` with its shards; orbax coordinates the
processes and lets only the primary one write the shared files.
"""

import os
from typing import Any, Mapping, Optional

from absl import logging
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from dvla_jax.config import config_check

# Bumped when the layout of the items changes incompatibly.
FORMAT_VERSION = 1

_TRAIN_STATE = "train_state"
_PARAMS = "params"
_METADATA = "metadata"


def _jsonable(value: Any) -> Any:
  """Converts config dicts, tuples and numpy/jax scalars into plain JSON values."""
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (jax.Array, np.ndarray, np.generic)):
    return np.asarray(value).tolist()
  return value


def _abstract(tree: Any) -> Any:
  """Shape/dtype/sharding of every leaf; leaves that already are abstract stay as they are."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


# Config fields that decide the shapes of the saved parameters: a run resumes only with the
# same values.
SHAPE_FIELDS = ("model.preset", "model.action_horizon", "model.action_head")


def _field(config: Mapping[str, Any], path: str) -> Any:
  node = config
  for key in path.split("."):
    if not isinstance(node, Mapping) or key not in node:
      return None
    node = node[key]
  return node


def check_workdir(config: Any, workdir: str) -> None:
  """`check_compatible` on `workdir/checkpoints` if that exists; creates nothing."""
  directory = os.path.join(workdir, "checkpoints")
  if "://" in workdir or not os.path.isdir(directory):
    return
  with Checkpointer(directory) as ckpt:
    check_compatible(ckpt, config)


def check_compatible(ckpt: "Checkpointer", config: Any) -> None:
  """Raises IncompatibleCheckpointError (one line naming both values) if the newest checkpoint
  in `ckpt` was saved by a run whose model differs from `config`'s in a `SHAPE_FIELDS` field.
  Nothing is read but the metadata, and nothing is written."""
  if ckpt.latest_step() is None:
    return
  saved = ckpt.metadata().get("config") or {}
  wanted = _jsonable(config)
  for path in SHAPE_FIELDS:
    old, new = _field(saved, path), _field(wanted, path)
    if old is not None and new is not None and old != new:
      raise IncompatibleCheckpointError(
          f"{ckpt.directory} holds a checkpoint (step {ckpt.latest_step()}) of {path}="
          f"{old!r}, this run has {path}={new!r}; allowed: {path}={old!r} to resume it, or a "
          "new workdir (nothing was overwritten)")


class IncompatibleCheckpointError(config_check.ConfigError):
  """The workdir's checkpoint was saved by a run with another model (one line)."""


class Checkpointer:
  """Saves and restores train state, params and metadata under `directory/<step>/`.

  Typical use in a trainer:

      ckpt = Checkpointer(workdir + "/checkpoints", max_to_keep=config.train.keep_checkpoints)
      if (step := ckpt.latest_step()) is not None:
        state, meta = ckpt.restore(step, jax.eval_shape(init_state))
      ...
      ckpt.save(step, state, state.params, {"env_steps": n, "config": config})
      ckpt.close()
  """

  def __init__(self, directory: str, max_to_keep: int = 2):
    """Opens (creating if needed) the checkpoint directory.

    Args:
      directory: where the step folders live; a relative local path is made absolute
        because orbax requires absolute paths.
      max_to_keep: older steps beyond this many are deleted after each save.
    """
    if "://" not in directory:
      directory = os.path.abspath(directory)
    self.directory = directory
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=True)
    self._manager = ocp.CheckpointManager(
        directory, options=options, item_names=(_TRAIN_STATE, _PARAMS, _METADATA))

  def latest_step(self) -> Optional[int]:
    """The newest saved step, or None when the directory holds no checkpoint."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """Every saved step still kept, oldest first."""
    return sorted(self._manager.all_steps())

  def save(self, step: int, train_state: Any, params: Any, metadata: Mapping[str, Any],
           force: bool = False) -> bool:
    """Starts an asynchronous save of step `step`.

    Args:
      step: the training iteration; it names the checkpoint folder.
      train_state: pytree of arrays (nnx.State, optax state, dicts, ...).
      params: the policy parameters (a pytree of arrays) for inference.
      metadata: JSON-able dict, e.g. {"env_steps": ..., "config": config}; ConfigDicts and
        numpy scalars are converted. "step" and "format_version" are added.
      force: save even if the manager's policy would skip this step.

    Returns:
      Whether a save was started.
    """
    meta = _jsonable(dict(metadata))
    meta.update(step=int(step), format_version=FORMAT_VERSION)
    return self._manager.save(
        step,
        args=ocp.args.Composite(**{
            _TRAIN_STATE: ocp.args.StandardSave(train_state),
            _PARAMS: ocp.args.StandardSave(params),
            _METADATA: ocp.args.JsonSave(meta),
        }),
        force=force)

  def _step_or_latest(self, step: Optional[int]) -> int:
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    return step

  def restore(self, step: Optional[int], abstract_train_state: Any) -> tuple[Any, dict]:
    """Restores the train state of `step` (None: the latest) and its metadata.

    Args:
      step: the step to restore, or None for the latest.
      abstract_train_state: the target structure: a pytree of `jax.ShapeDtypeStruct`
        (e.g. from `jax.eval_shape`) or of arrays; the restored arrays get its shapes,
        dtypes and shardings, and its tree structure (namedtuples, nnx.State, ...).

    Returns:
      (train_state, metadata).
    """
    step = self._step_or_latest(step)
    restored = self._manager.restore(
        step,
        args=ocp.args.Composite(**{
            _TRAIN_STATE: ocp.args.StandardRestore(_abstract(abstract_train_state)),
            _METADATA: ocp.args.JsonRestore(),
        }))
    return restored[_TRAIN_STATE], dict(restored[_METADATA])

  def restore_params(self, step: Optional[int], abstract_params: Any) -> Any:
    """Restores only the params item of `step` (None: the latest), e.g. for evaluation.

    Args:
      step: the step to restore, or None for the latest.
      abstract_params: target structure of the params, as for `restore`.

    Returns:
      The params pytree.
    """
    step = self._step_or_latest(step)
    restored = self._manager.restore(
        step, args=ocp.args.Composite(**{
            _PARAMS: ocp.args.StandardRestore(_abstract(abstract_params))}))
    return restored[_PARAMS]

  def metadata(self, step: Optional[int] = None) -> dict:
    """The metadata item of `step` (None: the latest) without touching any array."""
    step = self._step_or_latest(step)
    restored = self._manager.restore(
        step, args=ocp.args.Composite(**{_METADATA: ocp.args.JsonRestore()}))
    return dict(restored[_METADATA])

  def wait(self) -> None:
    """Blocks until every started save is on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager's threads."""
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def restore_policy_params(path: str, abstract_params: Any) -> Any:
  """The newest `params` item of a run (the warm start `rl.init_from` names).

  Args:
    path: a workdir (holding `checkpoints/`) or a checkpoint directory itself.
    abstract_params: target structure, shapes, dtypes and shardings of the params.

  Returns:
    The restored params.

  Raises:
    config_check.ConfigError: `path` holds no checkpoint (one line naming rl.init_from).
  """
  directory = os.path.join(path, "checkpoints")
  if not os.path.isdir(directory):
    directory = path
  if not os.path.isdir(directory):
    raise config_check.ConfigError(f"rl.init_from={path!r}: no such directory; allowed: the "
                                   "workdir of an earlier run, or '' (random init)")
  with Checkpointer(directory) as ckpt:
    step = ckpt.latest_step()
    if step is None:
      raise config_check.ConfigError(f"rl.init_from={path!r}: no checkpoint there; allowed: "
                                     "the workdir of an earlier run, or '' (random init)")
    logging.info("policy parameters from %s, step %d", directory, step)
    return ckpt.restore_params(step, abstract_params)
