"""Start-up validation of the config tree: one line naming the field and what is allowed.

`main` runs `validate` right after flag parsing, before anything is imported from the
heavy packages or compiled, so that a typo costs a second rather than a compilation.
The rules live in one table, `_RULES`, with one entry per field of
`dvla_jax.config.default_config`; a test keeps the two in step.

Names that other packages own (task names, model presets) are checked against lists the
caller passes in, so that this module imports nothing heavy; `registered_tasks` and
`model_presets` fetch those lists when the packages provide them.

Placements are checked here as far as the config alone allows (explicit device ids, overlap
when disaggregated, mesh shapes that must divide the batches); whether the devices exist is
known only once JAX starts, and `dvla_jax.parallel.mesh` reports that through the trainer as
a `ConfigError` too.
"""

import dataclasses
import importlib
import importlib.util
import math
import os
from typing import Any, Mapping, Optional

import ml_collections

from dvla_jax.config import names as names_lib
from dvla_jax.config.errors import ConfigError

NameSource = names_lib.NameSource
installed = names_lib.installed
registered_tasks = names_lib.registered_tasks
model_presets = names_lib.model_presets


@dataclasses.dataclass(frozen=True)
class _Rule:
  """Type and range (or choices) allowed for one config field."""

  kind: type
  gt: Optional[float] = None
  ge: Optional[float] = None
  le: Optional[float] = None
  choices: Optional[tuple[Any, ...]] = None

  def describe(self) -> str:
    if self.choices is not None:
      return ", ".join(repr(c) for c in self.choices)
    bounds = []
    if self.gt is not None:
      bounds.append(f"> {self.gt:g}")
    if self.ge is not None:
      bounds.append(f">= {self.ge:g}")
    if self.le is not None:
      bounds.append(f"<= {self.le:g}")
    return " ".join([self.kind.__name__, " and ".join(bounds)]) if bounds else self.kind.__name__

  def type_ok(self, value: Any) -> bool:
    # bool is an int subclass, and a float field may hold an int written without a dot.
    if isinstance(value, bool):
      return self.kind is bool
    if self.kind is float:
      return isinstance(value, (int, float))
    return isinstance(value, self.kind)

  def range_ok(self, value: Any) -> bool:
    if self.choices is not None:
      return value in self.choices
    if isinstance(value, float) and not math.isfinite(value):
      return False
    return not ((self.gt is not None and not value > self.gt)
                or (self.ge is not None and not value >= self.ge)
                or (self.le is not None and not value <= self.le))


def _int(**bounds) -> _Rule:
  return _Rule(int, **bounds)


def _float(**bounds) -> _Rule:
  return _Rule(float, **bounds)


def _choice(*choices: str) -> _Rule:
  return _Rule(str, choices=choices)


_PROBABILITY = _float(ge=0, le=1)

# One rule per field of default_config.get_config(); field docs live there.
_RULES: dict[str, _Rule] = {
    "seed": _int(ge=0),
    "mode": _choice("rl", "sft"),
    "pipeline": _choice("sync", "async"),
    "env.task": _Rule(str),
    "env.import_tasks": _Rule(str),
    "env.num_envs": _int(ge=1),
    "env.episode_length": _int(ge=0),
    "env.image_size": _int(ge=32, le=128),
    "env.impl": _choice("warp", "jax"),
    "env.domain_randomization": _Rule(bool),
    "env.reward_shaping": _float(ge=0, le=1),
    "model.preset": _Rule(str),
    "model.action_horizon": _int(ge=0),
    "model.action_head": _choice("bins", "gaussian"),
    "model.temperature": _float(gt=0),
    "model.dtype": _choice("float32", "bfloat16"),
    "model.remat": _Rule(bool),
    "rl.algo": _choice("ppo", "grpo"),
    "rl.rollout_length": _int(ge=1),
    "rl.lr": _float(gt=0),
    "rl.value_lr": _float(ge=0),
    "rl.gamma": _PROBABILITY,
    "rl.gae_lambda": _PROBABILITY,
    "rl.clip_eps": _float(gt=0, le=1),
    "rl.clip_eps_high": _float(gt=0),
    "rl.ratio_level": _choice("chunk", "action", "token"),
    "rl.target_kl": _float(ge=0),
    "rl.critic_warmup_iterations": _int(ge=0),
    "rl.episodic_slots": _Rule(bool),
    "rl.value_clip_eps": _float(ge=0),
    "rl.vf_coef": _float(ge=0),
    "rl.ent_coef": _float(ge=0),
    "rl.update_epochs": _int(ge=1),
    "rl.num_minibatches": _int(ge=1),
    "rl.max_grad_norm": _float(gt=0),
    "rl.reward_scale": _float(gt=0),
    "rl.decoupled": _choice("auto", "on", "off"),
    "rl.behaviour_weight_cap": _float(ge=0),
    "rl.max_staleness": _int(ge=-1),
    "rl.grpo_refill_slots": _int(ge=0),
    "rl.group_size": _int(ge=2),
    "rl.task_sampling": _choice("uniform", "learnability"),
    "rl.task_sampling_mix": _PROBABILITY,
    "rl.init_from": _Rule(str),
    "rl.warmstart_steps": _int(ge=0),
    "sft.demos": _Rule(str),
    "sft.episodes": _int(ge=1),
    "sft.holdout_episodes": _int(ge=1),
    "sft.expert_noise": _float(ge=0, le=1),
    "sft.batch_size": _int(ge=1),
    "sft.lr": _float(gt=0),
    "sft.label_sigma": _float(ge=0),
    "placement.mode": _choice("colocated", "disaggregated"),
    "placement.sim.devices": _int(ge=1),
    "placement.sim.device_ids": _Rule(str),
    "placement.actor.data": _int(ge=1),
    "placement.actor.fsdp": _int(ge=1),
    "placement.actor.tensor": _int(ge=1),
    "placement.actor.device_ids": _Rule(str),
    "placement.learner.data": _int(ge=1),
    "placement.learner.fsdp": _int(ge=1),
    "placement.learner.tensor": _int(ge=1),
    "placement.learner.device_ids": _Rule(str),
    "swimlanes.env_groups": _int(ge=1),
    "swimlanes.num_slots": _int(ge=0),
    "swimlanes.queue_size": _int(ge=1),
    "swimlanes.poll_s": _float(gt=0, le=1),
    "swimlanes.stall_timeout_s": _float(gt=0),
    "swimlanes.trace": _Rule(bool),
    "swimlanes.trace_max_spans": _int(ge=0),
    "train.iterations": _int(ge=1),
    "train.log_every": _int(ge=1),
    "train.eval_every": _int(ge=1),
    "train.eval_episodes": _int(ge=1),
    "train.checkpoint_every": _int(ge=1),
    "train.keep_checkpoints": _int(ge=1),
    "train.max_bad_updates": _int(ge=1),
    "train.wandb_project": _Rule(str),
    "testing.fault_lane": _choice("", "sampling", "inference", "gradient", "distribution"),
    "testing.fault_after": _int(ge=0),
    "testing.nan_from": _int(ge=-1),
    "testing.nan_count": _int(ge=1),
}

PLANES = ("sim", "actor", "learner")


def field_paths() -> tuple[str, ...]:
  """Dotted paths of every field that has a rule, in table order."""
  return tuple(_RULES)


def describe(path: str) -> Optional[str]:
  """What field `path` (dotted, e.g. "rl.lr") allows, e.g. "float > 0"; None if unknown."""
  rule = _RULES.get(path)
  return rule.describe() if rule else None


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
  for known in _RULES:
    if parent and not known.startswith(parent + "."):
      continue
    name = known[len(parent) + 1 if parent else 0:].split(".")[0]
    if name not in names:
      names.append(name)
  return names or sorted({known.split(".")[0] for known in _RULES})


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
    if path not in _RULES:
      raise ConfigError(f"{path}: unknown field; allowed: {', '.join(_siblings(path))}")
  for path, rule in _RULES.items():
    if path not in flat:
      raise ConfigError(f"{path}: missing field; allowed: {rule.describe()}")
    value = flat[path]
    if not rule.type_ok(value):
      raise ConfigError(f"{path}={value!r} has type {type(value).__name__}; "
                        f"allowed: {rule.describe()}")
    if not rule.range_ok(value):
      what = "not a choice" if rule.choices is not None else "out of range"
      raise ConfigError(f"{path}={value!r} {what}; allowed: {rule.describe()}")
  if not flat["env.task"]:
    raise ConfigError("env.task='' is empty; allowed: a registered task name, suite:<suite>, "
                      "or suite tasks separated by commas")

  _check_batches(flat)
  _check_placement(flat)

  names_lib.check_task_spec("env.task", flat["env.task"], known_tasks)
  names_lib.check_name("model.preset", flat["model.preset"], known_presets)


def _divisors_text(n: int) -> str:
  divisors = [d for d in range(1, n + 1) if n % d == 0]
  return f"{', '.join(map(str, divisors[:12]))}{', ...' if len(divisors) > 12 else ''}"


def _check_batches(flat: Mapping[str, Any]) -> None:
  """Env groups, learner batches and GRPO groups must split evenly."""
  groups = flat["swimlanes.env_groups"]
  if flat["pipeline"] == "async" and groups < 2:
    raise ConfigError(f"swimlanes.env_groups={groups} with pipeline='async'; allowed: int >= 2 "
                      "(one group simulates while another is in inference)")
  if flat["env.num_envs"] % groups:
    raise ConfigError(f"swimlanes.env_groups={groups} does not divide env.num_envs="
                      f"{flat['env.num_envs']}; allowed: {_divisors_text(flat['env.num_envs'])}")
  per_group = flat["env.num_envs"] // groups
  slots = flat["swimlanes.num_slots"]
  if slots and slots < groups + (flat["pipeline"] == "async"):
    raise ConfigError(f"swimlanes.num_slots={slots} too few for {groups} env groups; allowed: 0 "
                      f"(automatic) or >= {groups + (flat['pipeline'] == 'async')}")
  batch = per_group * flat["rl.rollout_length"]
  if batch % flat["rl.num_minibatches"]:
    what = ("env.num_envs * rl.rollout_length" if groups == 1 else
            "env.num_envs / swimlanes.env_groups * rl.rollout_length")
    raise ConfigError(f"rl.num_minibatches={flat['rl.num_minibatches']} does not divide "
                      f"{what} = {batch}; allowed: {_divisors_text(batch)}")
  if flat["rl.algo"] == "grpo":
    size = flat["rl.group_size"]
    if per_group % size:
      raise ConfigError(f"rl.group_size={size} does not divide the envs per env group "
                        f"({per_group}); allowed: {_divisors_text(per_group)}")
  if flat["rl.algo"] == "grpo" or flat["rl.episodic_slots"]:
    # (With env.episode_length=0 the task's default is known only to the env; the builder
    # checks it there.)
    why = "rl.algo='grpo'" if flat["rl.algo"] == "grpo" else "rl.episodic_slots=True"
    if flat["rl.rollout_length"] < flat["env.episode_length"]:
      raise ConfigError(f"rl.rollout_length={flat['rl.rollout_length']} shorter than "
                        f"env.episode_length={flat['env.episode_length']} with {why}; "
                        "allowed: >= env.episode_length (every env finishes an episode)")


def parse_device_ids(path: str, text: str) -> Optional[list[int]]:
  """Device ids of a `placement.<plane>.device_ids` string; None when it is "" (automatic).

  Raises:
    ConfigError: the text is not distinct non-negative integers separated by commas.
  """
  if not text.strip():
    return None
  try:
    ids = [int(part) for part in text.split(",")]
  except ValueError:
    ids = [-1]
  if min(ids) < 0 or len(set(ids)) != len(ids):
    raise ConfigError(f"{path}={text!r} is not a list of device ids; allowed: distinct "
                      "non-negative integers separated by commas, or '' (automatic)")
  return ids


def plane_shape(flat: Mapping[str, Any], plane: str) -> tuple[int, ...]:
  """Mesh shape of a plane: (devices,) for sim, (data, fsdp, tensor) for actor and learner."""
  prefix = f"placement.{plane}."
  if plane == "sim":
    return (flat[prefix + "devices"],)
  return tuple(flat[prefix + axis] for axis in ("data", "fsdp", "tensor"))


def _check_placement(flat: Mapping[str, Any]) -> None:
  """Static placement checks; device counts are checked once JAX knows the devices."""
  explicit = {}
  for plane in PLANES:
    path = f"placement.{plane}.device_ids"
    ids = parse_device_ids(path, flat[path])
    size = math.prod(plane_shape(flat, plane))
    if ids is not None:
      if len(ids) != size:
        raise ConfigError(f"{path}={flat[path]!r} has {len(ids)} devices but the {plane} mesh "
                          f"{'x'.join(map(str, plane_shape(flat, plane)))} needs {size}; "
                          f"allowed: {size} ids")
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
  groups = flat["swimlanes.env_groups"]
  sim = flat["placement.sim.devices"]
  if groups % sim:
    raise ConfigError(f"placement.sim.devices={sim} does not divide swimlanes.env_groups="
                      f"{groups}; allowed: {_divisors_text(groups)}")
  per_group = flat["env.num_envs"] // groups
  actor_batch = flat["placement.actor.data"] * flat["placement.actor.fsdp"]
  if per_group % actor_batch:
    raise ConfigError(
        f"placement.actor.data * placement.actor.fsdp = {actor_batch} does not divide the envs "
        f"per env group ({per_group}); allowed: a product in {_divisors_text(per_group)}")
  minibatch = per_group * flat["rl.rollout_length"] // flat["rl.num_minibatches"]
  learner_batch = flat["placement.learner.data"] * flat["placement.learner.fsdp"]
  if minibatch % learner_batch:
    raise ConfigError(
        f"placement.learner.data * placement.learner.fsdp = {learner_batch} does not divide "
        f"the minibatch ({minibatch} samples); allowed: a product in {_divisors_text(minibatch)}")


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
