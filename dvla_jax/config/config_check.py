"""Start-up validation of the config tree: one line naming the field and what is allowed.

`main` runs `validate` right after flag parsing, before anything is imported from the
heavy packages or compiled, so that a typo costs a second rather than a compilation.
Each field's own rule is declared with it (`dvla_jax.config.fields`); the checks that relate
several fields are the named validators in `VALIDATORS`, run in order after those.

Names that other packages own (task names, model presets) are checked against lists the
caller passes in, so that this module imports nothing heavy; `registered_tasks` and
`model_presets` fetch those lists when the packages provide them.

Placements are checked here as far as the config alone allows (explicit device ids, overlap
when disaggregated, mesh shapes that must divide the batches); whether the devices exist is
known only once JAX starts, and `dvla_jax.parallel.mesh` reports that through the trainer as
a `ConfigError` too.
"""

import importlib
import importlib.util
import math
import os
from typing import Any, Callable, Mapping, Optional

import ml_collections

from dvla_jax.config import fields
from dvla_jax.config import names as names_lib
from dvla_jax.config import placement_spec
from dvla_jax.config.errors import ConfigError

NameSource = names_lib.NameSource
installed = names_lib.installed
registered_tasks = names_lib.registered_tasks
model_presets = names_lib.model_presets


PLANES = placement_spec.PLANES


def field_paths() -> tuple[str, ...]:
  """Dotted paths of every declared field (`fields.FIELDS`), in declaration order."""
  return fields.paths()


def describe(path: str) -> Optional[str]:
  """What field `path` (dotted, e.g. "rl.lr") allows, e.g. "float > 0"; None if unknown."""
  field = fields.get(path)
  return field.rule.describe() if field else None


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in config.items():
    path = f"{prefix}{key}"
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      flat.update(_flatten(value, path + "."))
    else:
      flat[path] = value
  return flat


def _siblings(path: str) -> list[str]:
  """Known names next to `path` (fields and groups of the same parent), for error messages."""
  parent = path.rpartition(".")[0]
  names = []
  for known in fields.paths():
    if parent and not known.startswith(parent + "."):
      continue
    name = known[len(parent) + 1 if parent else 0:].split(".")[0]
    if name not in names:
      names.append(name)
  return names or sorted({known.split(".")[0] for known in fields.paths()})


def validate(config: ml_collections.ConfigDict, *, known_tasks: NameSource = None,
             known_presets: NameSource = None) -> None:
  """Checks every field against the rules; raises ConfigError for the first violation.

  Args:
    config: the full config tree (as built by `default_config.get_config()`).
    known_tasks: allowed task names, or a function returning them (called only after the
      cheap checks pass); None skips the check. A mapping task -> suite ("" for a
      stand-alone task, as `registered_tasks` returns) also checks `suite:<suite>` specs and
      that a list of tasks holds suite tasks only.
    known_presets: allowed `model.preset` names, same conventions as `known_tasks`.

  Raises:
    ConfigError: one line, e.g. "rl.lr=-1.0 out of range; allowed: float > 0".
  """
  flat = _flatten(config)
  for path in flat:
    if fields.get(path) is None:
      raise ConfigError(f"{path}: unknown field; allowed: {', '.join(_siblings(path))}")
  for field in fields.FIELDS:
    rule = field.rule
    if field.path not in flat:
      raise ConfigError(f"{field.path}: missing field; allowed: {rule.describe()}")
    value = flat[field.path]
    if not rule.type_ok(value):
      raise ConfigError(f"{field.path}={value!r} has type {type(value).__name__}; "
                        f"allowed: {rule.describe()}")
    if not rule.range_ok(value):
      what = "not a choice" if rule.choices is not None else "out of range"
      raise ConfigError(f"{field.path}={value!r} {what}; allowed: {rule.describe()}")
  for validator in VALIDATORS:
    validator(flat)
  names_lib.check_task_spec("env.task", flat["env.task"], known_tasks)
  names_lib.check_name("model.preset", flat["model.preset"], known_presets)


def _divisors_text(n: int) -> str:
  divisors = [d for d in range(1, n + 1) if n % d == 0]
  return f"{', '.join(map(str, divisors[:12]))}{', ...' if len(divisors) > 12 else ''}"


def _per_group(flat: Mapping[str, Any]) -> int:
  return flat["env.num_envs"] // flat["swimlanes.env_groups"]


# -- Named validators: each takes the flat config ({dotted path: value}) and raises a
# one-line ConfigError naming the field to change. They run in `VALIDATORS` order, each
# free to assume the ones before it passed.

def validate_task(flat: Mapping[str, Any]) -> None:
  """env.task names something."""
  if not flat["env.task"]:
    raise ConfigError("env.task='' is empty; allowed: a registered task name, suite:<suite>, "
                      "or suite tasks separated by commas")


def validate_env_groups(flat: Mapping[str, Any]) -> None:
  """The async pipeline has two env groups or more, and the groups split the envs evenly."""
  groups = flat["swimlanes.env_groups"]
  if flat["pipeline"] == "async" and groups < 2:
    raise ConfigError(f"swimlanes.env_groups={groups} with pipeline='async'; allowed: int >= 2 "
                      "(one group simulates while another is in inference)")
  if flat["env.num_envs"] % groups:
    raise ConfigError(f"swimlanes.env_groups={groups} does not divide env.num_envs="
                      f"{flat['env.num_envs']}; allowed: {_divisors_text(flat['env.num_envs'])}")


def validate_slots(flat: Mapping[str, Any]) -> None:
  """Enough rollout slots for one filling per group (and one waiting, async)."""
  groups, slots = flat["swimlanes.env_groups"], flat["swimlanes.num_slots"]
  least = groups + (flat["pipeline"] == "async")
  if slots and slots < least:
    raise ConfigError(f"swimlanes.num_slots={slots} too few for {groups} env groups; allowed: 0 "
                      f"(automatic) or >= {least}")


def validate_minibatches(flat: Mapping[str, Any]) -> None:
  """rl.num_minibatches divides a slot's samples."""
  batch = _per_group(flat) * flat["rl.rollout_length"]
  if batch % flat["rl.num_minibatches"]:
    what = ("env.num_envs * rl.rollout_length" if flat["swimlanes.env_groups"] == 1 else
            "env.num_envs / swimlanes.env_groups * rl.rollout_length")
    raise ConfigError(f"rl.num_minibatches={flat['rl.num_minibatches']} does not divide "
                      f"{what} = {batch}; allowed: {_divisors_text(batch)}")


def validate_grpo_groups(flat: Mapping[str, Any]) -> None:
  """GRPO groups tile each env group."""
  if flat["rl.algo"] == "grpo" and _per_group(flat) % flat["rl.group_size"]:
    raise ConfigError(f"rl.group_size={flat['rl.group_size']} does not divide the envs per env "
                      f"group ({_per_group(flat)}); allowed: {_divisors_text(_per_group(flat))}")


def validate_episodic_rollout(flat: Mapping[str, Any]) -> None:
  """With episodic slots (GRPO, rl.episodic_slots) a slot holds a whole episode. (With
  env.episode_length=0 the task's default is known only to the env; the builder checks it.)"""
  if flat["rl.algo"] == "grpo" or flat["rl.episodic_slots"]:
    why = "rl.algo='grpo'" if flat["rl.algo"] == "grpo" else "rl.episodic_slots=True"
    if flat["rl.rollout_length"] < flat["env.episode_length"]:
      raise ConfigError(f"rl.rollout_length={flat['rl.rollout_length']} shorter than "
                        f"env.episode_length={flat['env.episode_length']} with {why}; "
                        "allowed: >= env.episode_length (every env finishes an episode)")


def _placement(flat: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
  """The placement block, nested as `placement_spec` reads it."""
  block: dict[str, dict[str, Any]] = {plane: {} for plane in PLANES}
  for path, value in flat.items():
    parts = path.split(".")
    if parts[0] == "placement" and len(parts) == 3:
      block[parts[1]][parts[2]] = value
  return block


def validate_device_ids(flat: Mapping[str, Any]) -> None:
  """Explicit device ids parse, one per device of the plane's mesh, and do not overlap when
  the planes are disaggregated. (Whether the devices exist is known once JAX starts:
  `dvla_jax.parallel.mesh`.)"""
  placement = _placement(flat)
  explicit = {}
  for plane in PLANES:
    ids = placement_spec.device_ids(placement, plane)
    shape = placement_spec.plane_shape(placement, plane)
    if ids is not None:
      if len(ids) != math.prod(shape):
        path = f"placement.{plane}.device_ids"
        raise ConfigError(f"{path}={flat[path]!r} has {len(ids)} devices but the {plane} mesh "
                          f"{'x'.join(map(str, shape))} needs {math.prod(shape)}; "
                          f"allowed: {math.prod(shape)} ids")
      explicit[plane] = ids
  if flat["placement.mode"] == "disaggregated":
    for i, a in enumerate(PLANES):
      for b in PLANES[i + 1:]:
        common = sorted(set(explicit.get(a, ())) & set(explicit.get(b, ())))
        if common:
          raise ConfigError(
              f"placement.{b}.device_ids shares devices {','.join(map(str, common))} with "
              f"placement.{a}.device_ids in placement.mode='disaggregated'; allowed: disjoint "
              "device sets (or placement.mode='colocated')")


def validate_sim_devices(flat: Mapping[str, Any]) -> None:
  """The env groups spread evenly over the sim devices."""
  groups, sim = flat["swimlanes.env_groups"], flat["placement.sim.devices"]
  if groups % sim:
    raise ConfigError(f"placement.sim.devices={sim} does not divide swimlanes.env_groups="
                      f"{groups}; allowed: {_divisors_text(groups)}")


def validate_actor_batch(flat: Mapping[str, Any]) -> None:
  """The actor mesh's batch axes split an env group."""
  per_group = _per_group(flat)
  actor_batch = flat["placement.actor.data"] * flat["placement.actor.fsdp"]
  if per_group % actor_batch:
    raise ConfigError(
        f"placement.actor.data * placement.actor.fsdp = {actor_batch} does not divide the envs "
        f"per env group ({per_group}); allowed: a product in {_divisors_text(per_group)}")


def validate_learner_batch(flat: Mapping[str, Any]) -> None:
  """The learner mesh's batch axes split a minibatch."""
  minibatch = _per_group(flat) * flat["rl.rollout_length"] // flat["rl.num_minibatches"]
  learner_batch = flat["placement.learner.data"] * flat["placement.learner.fsdp"]
  if minibatch % learner_batch:
    raise ConfigError(
        f"placement.learner.data * placement.learner.fsdp = {learner_batch} does not divide "
        f"the minibatch ({minibatch} samples); allowed: a product in {_divisors_text(minibatch)}")


VALIDATORS: tuple[Callable[[Mapping[str, Any]], None], ...] = (
    validate_task, validate_env_groups, validate_slots, validate_minibatches,
    validate_grpo_groups, validate_episodic_rollout, validate_device_ids, validate_sim_devices,
    validate_actor_batch, validate_learner_batch)


def load_config_file(argument: str) -> ml_collections.ConfigDict:
  """The config a `path[:arg]` config file builds (`--config=` of `dvla_jax.main`), unlocked.

  Raises:
    ValueError: no file at `path`, or no `get_config` in it (one line).
    Exception: whatever the file or its `get_config` raises.
  """
  path, *arg = argument.split(":", 1)
  if not os.path.isfile(path):
    raise ValueError(f"--config={argument}: no such file; allowed: a config file, "
                     "e.g. configs/gpu8.py")
  spec = importlib.util.spec_from_file_location("_dvla_config_file", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    raise ValueError(f"--config={argument}: {path} defines no get_config(); allowed: a config "
                     "file with get_config(arg='') returning an ml_collections.ConfigDict")
  return get_config(*arg)
