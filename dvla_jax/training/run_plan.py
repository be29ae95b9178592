"""Ahead-of-time check of a run config for a device count: placement and memory per device.

`plan_run(config, num_devices)` does what a run does at start-up before it compiles anything
(the config check, the plane placement, the mesh-divides check), then plans the device
memory of every plane with `dvla_jax.parallel.memory_plan` and adds the planes up on the
devices they share. Nothing is allocated and no device is needed: a config for 64 TPU chips
is checked on a laptop.

Bytes per device, by plane (a device in several planes, as when colocated, holds the sum):
  learner: the learner step of one minibatch (`memory_plan`: parameters, Adam state,
    gradients, activations, FSDP gather buffers, the minibatch) plus the rollout slot the
    update reads, split over the learner's batch axes.
  actor: the actor step of one env group (parameters, the incoming weight buffer,
    activations, gather buffers, observations) plus the ring of rollout slots, split over
    the actor's batch axes.
  sim: the env state of the env groups on that device (one world's brax `State`, physics and
    observations, from `jax.eval_shape` of a reset, times the worlds), and the evaluation
    group of the async pipeline on sim device 0. The Warp renderer's own buffers are not
    counted.
"""

import dataclasses
import math
from typing import Optional

import jax

from dvla_jax import envs
from dvla_jax import memory
from dvla_jax import models
from dvla_jax import parallel
from dvla_jax.config import config_check
from dvla_jax.envs import randomization
from dvla_jax.parallel import memory_plan
from dvla_jax.programs import builders
from dvla_jax.programs import steps

GIB = memory_plan.GIB


@dataclasses.dataclass(frozen=True)
class RunPlan:
  """The placement and per-device memory of one run config on `num_devices` devices.

  Attributes:
    num_devices: devices the plan is for (all processes together).
    device_ids: plane name -> the device ids it uses.
    model_config: the VLA config the run builds (env-derived sizes filled in).
    steps: the learner and actor step plans (`memory_plan.MemoryPlan`).
    slot_bytes: bytes of one rollout slot `[T, envs_per_group, ...]` (all devices).
    num_slots: rollout slots in the ring.
    sim_bytes_per_world: MJX state bytes of one world.
    per_device: device id -> term name -> bytes on that device.
  """

  num_devices: int
  device_ids: dict[str, list[int]]
  model_config: models.VLAConfig
  steps: memory_plan.MemoryPlan
  slot_bytes: int
  num_slots: int
  sim_bytes_per_world: int
  per_device: dict[int, dict[str, int]]

  def device_total(self, device: int) -> int:
    return sum(self.per_device.get(device, {}).values())

  def peak(self) -> tuple[int, int]:
    """(device id, bytes) of the device that needs the most memory."""
    device = max(self.per_device, key=self.device_total)
    return device, self.device_total(device)

  def fits(self, device_bytes: int) -> bool:
    return self.peak()[1] <= device_bytes

  def format(self, device_bytes: Optional[int] = None) -> str:
    """A table: the planes' devices, the terms of the fullest device, and a verdict."""
    n = self.steps.num_params
    lines = [f"model: {n:,} parameters; {self.num_devices} device"
             f"{'s' if self.num_devices > 1 else ''}, per plane (most on one device):"]
    for plane, ids in self.device_ids.items():
      most = max(self.device_total(d) for d in ids)
      lines.append(f"  {plane:8s} devices {_ranges(ids):12s} {most / GIB:10.4f} GiB")
    device, total = self.peak()
    lines.append(f"fullest device {device}, per term:")
    for name, size in self.per_device[device].items():
      lines.append(f"  {name:28s} {size / GIB:10.4f} GiB")
    lines.append(f"  {'total':28s} {total / GIB:10.4f} GiB")
    if device_bytes is not None:
      verdict = "fits" if total <= device_bytes else "DOES NOT FIT"
      lines.append(f"{verdict}: {total / GIB:.2f} GiB of {device_bytes / GIB:.2f} GiB on the "
                   f"fullest device ({100 * total / device_bytes:.0f}%)")
    return "\n".join(lines)


def _ranges(ids: list[int]) -> str:
  if ids == list(range(ids[0], ids[0] + len(ids))):
    return f"{ids[0]}-{ids[-1]}" if len(ids) > 1 else str(ids[0])
  return ",".join(map(str, ids))


def _mesh_shape(placement, plane: str) -> dict[str, int]:
  return {axis: int(placement[plane][axis]) for axis in memory_plan.MESH_AXES}


def plan_run(config, num_devices: int, processes: int = 1) -> RunPlan:
  """Checks `config` for `num_devices` devices and plans its memory per device.

  Args:
    config: a run config (as a config file's `get_config` returns it).
    num_devices: devices of the run, all processes together.
    processes: processes of the run (`jax.distributed`). With several, `placement` is each
      process's share of `num_devices / processes` devices and the learner mesh joins them
      along fsdp (`dvla_jax.parallel.mesh`); the plan is one process's, device ids are that
      process's, and the learner's weight snapshot is a whole replica per learner device.

  Returns:
    The plan.

  Raises:
    config_check.ConfigError: the config check fails, the placement needs devices that do not
      exist, or a plane's mesh does not divide the model (the same one-line errors a run
      gives at start-up).
  """
  config_check.validate(config, known_tasks=config_check.registered_tasks,
                        known_presets=config_check.model_presets)
  placement = config.placement
  if processes < 1 or num_devices % processes:
    raise config_check.ConfigError(
        f"{num_devices} devices over {processes} processes; allowed: the same number of "
        "devices in every process")
  shapes = {plane: _mesh_shape(placement, plane) for plane in ("actor", "learner")}
  shapes["learner"]["fsdp"] *= processes  # Every process's learner devices, along fsdp.
  try:
    ids = parallel.resolve_device_ids(placement, num_devices // processes)
    preset = models.get_preset(config.model.preset)
    for plane in ("actor", "learner"):
      parallel.check_mesh_divides(preset, shapes[plane], where=f"placement.{plane}")
  except (parallel.PlacementError, parallel.MeshDivisionError) as e:
    raise config_check.ConfigError(str(e)) from None

  # One world of the task gives the observation sizes and one world's MJX state.
  env = envs.make(config.env.task, builders.env_config(config, num_worlds=1))
  key = jax.random.key(config.seed)
  venv = randomization.wrap_env(env, config.env.domain_randomization, key)
  state = jax.eval_shape(venv.reset, jax.random.key_data(jax.random.split(key, 1)))
  sim_bytes_per_world = memory.tree_bytes(state)  # physics, observations, wrapper info
  mcfg = builders.model_config(config, env)

  groups = config.swimlanes.env_groups
  per_group = config.env.num_envs // groups
  # An update learns from one slot of every process.
  minibatch = processes * per_group * config.rl.rollout_length // config.rl.num_minibatches
  learner_shape, actor_shape = shapes["learner"], shapes["actor"]
  plan = memory_plan.plan_memory(mcfg, learner_shape, batch=minibatch,
                                 actor_mesh_shape=actor_shape, actor_batch=per_group)

  obs_spec = {k: jax.ShapeDtypeStruct((per_group,) + tuple(v.shape[1:]), v.dtype)
              for k, v in state.obs.items()}
  slot = jax.eval_shape(lambda: steps.empty_slot(
      obs_spec, config.rl.rollout_length, per_group, mcfg.action_horizon, mcfg.action_dim))
  slot_bytes = memory.tree_bytes(slot)
  num_slots = config.swimlanes.num_slots or groups + 1

  per_device: dict[int, dict[str, int]] = {}

  def add(device: int, name: str, size: int) -> None:
    terms = per_device.setdefault(device, {})
    terms[name] = terms.get(name, 0) + size

  # The learner reads one slot per process, split over all its devices.
  learner_split = learner_shape["data"] * learner_shape["fsdp"]
  snapshot = 0
  if processes > 1:  # Gathered whole onto every learner device (`Placement.gather`).
    whole = {axis: 1 for axis in memory_plan.MESH_AXES}
    # With partial fine-tuning the snapshot holds the trainable leaves only (`PolicyLanes`).
    snapshot = memory_plan.plan_memory(mcfg, whole).actor.terms["incoming weights"]
  for device in ids["learner"]:
    for name, size in plan.learner.terms.items():
      add(device, f"learner {name}", size)
    add(device, "learner rollout slot", math.ceil(processes * slot_bytes / learner_split))
    if snapshot:
      add(device, "learner weight snapshot", snapshot)
  actor_split = actor_shape["data"] * actor_shape["fsdp"]
  for device in ids["actor"]:
    for name, size in plan.actor.terms.items():
      add(device, f"actor {name}", size)
    add(device, "actor rollout slots", math.ceil(num_slots * slot_bytes / actor_split))
  sim_ids = ids["sim"]
  for group in range(groups):
    add(sim_ids[group % len(sim_ids)], "sim env state", per_group * sim_bytes_per_world)
  if config.pipeline == "async":  # Evaluation runs its own group on sim device 0.
    add(sim_ids[0], "sim eval env state", per_group * sim_bytes_per_world)
  return RunPlan(num_devices=num_devices, device_ids=ids, model_config=mcfg, steps=plan,
                 slot_bytes=slot_bytes, num_slots=num_slots,
                 sim_bytes_per_world=sim_bytes_per_world, per_device=per_device)
