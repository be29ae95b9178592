"""The unit of work of each lane, shared by the synchronous and the asynchronous pipeline.

Both pipelines call exactly these functions, and through them the same compiled programs
(`interface.LanePrograms`, which the components bundle provides); they differ only in whether
one thread runs the stages one after another or four threads run them at the same time.

  sampling      `Sampler.reset` / `Sampler.step`: env groups on their sim devices
  inference     `PolicyLanes.act` and `PolicyLanes.record`: policy forward, rollout slot writes
  gradient      `PolicyLanes.learn`: a rollout slot onto the learner mesh, one update;
                `PolicyLanes.publish`: the new params into the learner's snapshot buffer
  distribution  `PolicyLanes.distribute_into`: a snapshot onto the actor mesh, into the actors'
                incoming weight buffer

The device memory they work in is allocated once (`dvla_jax.memory`): the rollout slots
(`PolicyLanes.slot_pool`, a `memory.SlotPool` on the actor mesh), the learner's params snapshot
and the actors' weights (`PolicyLanes.weight_buffers`, two `memory.WeightBuffer`s); every
per-step write into them is a donating update.
"""

import dataclasses
from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from dvla_jax import envs
from dvla_jax import memory
from dvla_jax import models
from dvla_jax import parallel
from dvla_jax.config import rng_streams
from dvla_jax.parallel import Placement
from dvla_jax.programs import rollout_metrics as rollout_metrics_lib
from dvla_jax.programs import steps
from dvla_jax.rl import curriculum as curriculum_lib
from dvla_jax.swimlanes.interface import LanePrograms

_any = jax.jit(jnp.max)


@dataclasses.dataclass(frozen=True)
class Poison:
  """Test hook: updates `start` .. `start + count - 1` (1-based iterations) get NaN rewards."""

  start: int = -1
  count: int = 1

  def applies(self, iteration: int) -> bool:
    return self.start >= 0 and self.start <= iteration < self.start + self.count


@flax.struct.dataclass
class PoolSlot:
  """One slot of the rollout pool: T steps of one env group and the value that bootstraps them.

  Attributes:
    rollout: the steps, `[T, B, ...]`.
    bootstrap: f32 [B], critic value of the observation after the last step (written into
      the slot so that a full slot carries no other device array to the learner).
  """

  rollout: steps.RolloutSlot
  bootstrap: jax.Array


@dataclasses.dataclass
class GrpoRefill:
  """A GRPO batch being refilled: its slot (the mixed groups first), which group positions
  hold a group that carries signal, how many rollout slots went into it, and the rollout
  metrics of those slots as they were collected (the batch itself holds mostly mixed groups,
  so its own success rate says little about the policy)."""

  slot: PoolSlot
  group_valid: jax.Array
  slots: int
  collected: list[dict[str, jax.Array]] = dataclasses.field(default_factory=list)

  def rollout_metrics(self) -> dict[str, jax.Array]:
    """`rollout_metrics.slot_metrics` over every collected slot (episode-weighted means)."""
    return rollout_metrics_lib.combine_slot_metrics(self.collected)

  def full(self) -> bool:
    """Every group position is filled (waits for the device)."""
    return bool(jax.device_get(jnp.min(self.group_valid)) > 0)


def task_curriculum(components: LanePrograms) -> curriculum_lib.TaskCurriculum:
  """The run's `rl.task_sampling` over its tasks (shared by its Sampler and PolicyLanes)."""
  rl_config = components.config.rl
  return curriculum_lib.TaskCurriculum(envs.resolve_tasks(components.config.env.task),
                                       rl_config.task_sampling, rl_config.task_sampling_mix)


class Sampler:
  """The env groups' states and the steps of the sampling lane.

  With an active `curriculum`, each rollout slot after the first assigns the worlds' tasks
  by its shares (blocks of `rl.group_size` worlds under GRPO); otherwise the tasks take turns.
  """

  def __init__(self, components: LanePrograms, placement: Placement, rng: jax.Array,
               curriculum: Optional[curriculum_lib.TaskCurriculum] = None):
    self.components = components
    self.placement = placement
    self.rng = rng
    self.curriculum = curriculum
    # The run key's words: with the group and slot, the seed of each slot's task draw.
    self._task_seed = [int(x) for x in np.ravel(jax.random.key_data(rng))]
    self.states: list[Any] = [None] * len(components.groups)
    self.steps_in_slot = [0] * len(components.groups)
    self.rollouts = [0] * len(components.groups)

  def _tasks(self, group: int, count: int) -> Optional[np.ndarray]:
    """The curriculum's task per world for rollout `count` of `group` (None: uniform)."""
    if self.curriculum is None or not self.curriculum.active:
      return None
    rl_config = self.components.config.rl
    share = rl_config.group_size if rl_config.algo == "grpo" else 1
    rng = np.random.default_rng(self._task_seed + [rng_streams.TASK, group, count])
    return self.curriculum.tasks(self.components.envs_per_group, share, rng)

  def _key(self, purpose: int, group: int, count: int) -> jax.Array:
    key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(self.rng, purpose), group),
                             count)
    return self.placement.put_sim(key, group)

  def reset(self, group: int, round_: int = 0) -> steps.EnvStep:
    """Fresh episodes for every env of `group` (on its sim device); returns their EnvStep."""
    key = self._key(rng_streams.RESET, group, round_)
    self.states[group] = self.components.groups[group].reset(key)
    self.steps_in_slot[group] = 0
    return steps.env_step_result(self.states[group])

  def current(self, group: int) -> steps.EnvStep:
    """The EnvStep of the group's current state (its observations are the next to act on)."""
    return steps.env_step_result(self.states[group])

  def step(self, group: int, actions: jax.Array) -> steps.EnvStep:
    """Steps `group` with `actions` (on its sim device).

    After the last step of a rollout slot the group starts the next one (`start_rollout`):
    the returned EnvStep then carries the reward of the step just taken and the
    observations the next slot starts from.
    """
    g = self.components.groups[group]
    state = g.env_step(self.states[group], actions)
    result = steps.env_step_result(state)
    self.steps_in_slot[group] += 1
    if self.steps_in_slot[group] == self.components.config.rl.rollout_length:
      self.steps_in_slot[group] = 0
      self.rollouts[group] += 1
      state = g.start_rollout(state, self._key(rng_streams.ROLLOUT, group, self.rollouts[group]),
                              steps.first_episode_slots(self.components.config.rl),
                              self._tasks(group, self.rollouts[group]))
      result = result.replace(obs=state.obs)
    self.states[group] = state
    return result


class PolicyLanes:
  """The work of the three lanes that handle the policy, on the plane meshes: inference
  (`act`, `record`), gradient (`learn`, `publish`) and distribution (`distribute_into`)."""

  def __init__(self, components: LanePrograms, placement: Placement, rng: jax.Array,
               poison: Optional[Poison] = None,
               curriculum: Optional[curriculum_lib.TaskCurriculum] = None):
    self.components = components
    self.placement = placement
    self.rng = rng
    self.poison = poison or Poison()
    self.curriculum = curriculum
    # Partial fine-tuning: the parameter groups that learn (None: all of them).
    self.trainable = models.trainable.partial(components.config.model)
    self._sync_bytes = 0

  def act_key(self, group: int, count: int) -> jax.Array:
    act = jax.random.fold_in(self.rng, rng_streams.ACT)
    return jax.random.fold_in(jax.random.fold_in(act, group), count)

  def to_actor(self, result: steps.EnvStep) -> steps.EnvStep:
    """An EnvStep from a sim device onto the actor mesh, split along the env axis."""
    return self.placement.put_batch(result, "actor", batch_axis=0)

  def act(self, params, obs, rng: jax.Array) -> steps.ActOutput:
    """Policy forward on the actor mesh."""
    return self.components.act(params, obs, rng)

  def actions_to_sim(self, out: steps.ActOutput, group: int) -> jax.Array:
    return self.placement.put_sim(out.actions, group)

  def slot_pool(self, num_slots: int) -> memory.SlotPool:
    """The ring of `num_slots` rollout slots, allocated on the actor mesh (env axis split)."""
    components, placement = self.components, self.placement

    def empty() -> PoolSlot:
      return PoolSlot(rollout=components.empty_slot(),
                      bootstrap=jnp.zeros((components.envs_per_group,)))

    # Rollout fields are time-major, [T, B, ...]; the bootstrap is [B].
    shardings = jax.tree.map(
        lambda x: placement.batch_sharding("actor", tuple(x.shape), int(x.ndim > 1)),
        jax.eval_shape(empty))
    return memory.SlotPool(jax.jit(empty, out_shardings=shardings), num_slots)

  def weight_buffers(self, state: steps.TrainState, version: int
                     ) -> tuple[memory.WeightBuffer, memory.WeightBuffer]:
    """The learner's params snapshot and the actors' weights, both double buffers.

    The snapshot (learner mesh) is what the distribution lane reads while the next update
    donates the train state (replicated over the learner mesh when it spans processes, so
    that publishing gathers the weights and distributing stays within each process); the
    actors' buffer (actor mesh) is what inference acts with while the next version is copied
    in. With partial fine-tuning (`model.trainable`, e.g. LoRA) both hold the trainable
    leaves only, each version's delta; the actors keep one copy of the frozen rest, sent
    here once, as their buffer's base.

    Returns:
      (learner snapshot, actor weights), both holding `state.params` as `version`.
    """
    params, base = state.params, None
    if self.trainable is not None:
      params, base = models.trainable.split(params, self.trainable)
    if self.placement.spans_processes:  # Gathered: every process holds a whole replica.
      snapshot = self.placement.gather(params)
      base = None if base is None else self.placement.gather(base)
    else:
      snapshot = self.components.copy_params(params)
    # A copy even where the planes share devices: the actors' buffers are donated on their own.
    actor = self.components.copy_params(self.distribute(snapshot))
    if base is not None:
      base = self.components.copy_params(self.distribute(base))
    self._sync_bytes = memory.tree_bytes(snapshot)
    return memory.WeightBuffer(snapshot, version), memory.WeightBuffer(actor, version, base)

  @property
  def sync_bytes(self) -> int:
    """Bytes each weight version sends to the actors (every leaf, or the trainable ones)."""
    return self._sync_bytes

  def record(self, slot: PoolSlot, t: int, obs, out: steps.ActOutput, version: int,
             result: steps.EnvStep) -> PoolSlot:
    """Writes step `t` into `slot` in place (the slot passed in is consumed)."""
    return slot.replace(
        rollout=self.components.write_step(slot.rollout, t, obs, out, version, result))

  def record_bootstrap(self, slot: PoolSlot, value: jax.Array) -> PoolSlot:
    """Writes the bootstrap value [B] into `slot` in place (the slot passed in is consumed)."""
    return slot.replace(bootstrap=memory.overwrite(slot.bootstrap, value))

  def learn(self, state: steps.TrainState, slot: PoolSlot, iteration: int,
            group_valid: jax.Array | None = None,
            rollout_metrics: dict[str, jax.Array] | None = None
            ) -> tuple[steps.TrainState, dict[str, jax.Array]]:
    """One update on a full slot; `iteration` (1-based) is the update's number.

    The train state passed in is donated; the slot is only read. `group_valid`: a refilled
    GRPO batch's filled group positions (see `GrpoRefill`); `rollout_metrics`: the `rollout/`
    metrics to report instead of the slot's own (`GrpoRefill.rollout_metrics`).
    """
    rollout = self.placement.put_batch(slot.rollout, "learner", batch_axis=1)
    bootstrap = self.placement.put_batch(slot.bootstrap, "learner", batch_axis=0)
    if self.poison.applies(iteration):
      rollout = self.components.poison(rollout)
    # A refilled GRPO batch brings the metrics of the slots it collected: not computed again.
    if rollout_metrics is not None:
      metrics = dict(rollout_metrics)
    else:
      metrics = self.components.slot_metrics(rollout)
    rng = jax.random.fold_in(jax.random.fold_in(self.rng, rng_streams.LEARN), iteration)
    if group_valid is not None:
      group_valid = self.placement.put_batch(group_valid, "learner", batch_axis=0)
    state, learner_metrics = self.components.update(state, rollout.transition, bootstrap, rng,
                                              group_valid)
    metrics.update(learner_metrics)
    if self.curriculum is not None:  # Its shares for the next slots, then what it saw here.
      metrics.update(self.curriculum.metrics())
      self.curriculum.observe(metrics)
    return state, metrics

  def refills_grpo(self) -> int:
    """Extra slots a GRPO update may take to refill its batch (0: no refill)."""
    rl_config = self.components.config.rl
    if rl_config.algo != "grpo" or self.placement.spans_processes:
      # Across processes every process would have to take the same number of slots (the
      # update's collectives must match); there, dropped groups are masked instead.
      return 0
    return rl_config.grpo_refill_slots

  def grpo_start(self, slot: PoolSlot) -> "GrpoRefill":
    """A refilled GRPO batch that starts from `slot` (consumed)."""
    collected = [self.components.slot_metrics(slot.rollout)]  # Before the slot is consumed.
    rollout, bootstrap, valid = self.components.grpo_compact(slot.rollout, slot.bootstrap)
    return GrpoRefill(PoolSlot(rollout=rollout, bootstrap=bootstrap), valid, 1, collected)

  def grpo_add(self, batch: "GrpoRefill", extra: PoolSlot) -> "GrpoRefill":
    """`batch` refilled with `extra`'s mixed groups (`batch` is consumed, `extra` only read)."""
    collected = batch.collected + [self.components.slot_metrics(extra.rollout)]
    rollout, bootstrap, valid = self.components.grpo_merge(
        batch.slot.rollout, batch.slot.bootstrap, batch.group_valid, extra.rollout,
        extra.bootstrap)
    return GrpoRefill(PoolSlot(rollout=rollout, bootstrap=bootstrap), valid, batch.slots + 1,
                      collected)

  def publish(self, snapshot: memory.WeightBuffer, version: int,
              state: steps.TrainState) -> None:
    """Copies the learner params into the snapshot buffer in place, as `version` (waits for
    the copy: the next update donates `state`). Across processes this is a gather, which is
    why the gradient lane, not the distribution lane, does it: every process's collectives
    then come from one lane, in the same order."""
    params = state.params
    if self.trainable is not None:
      params = models.trainable.split(params, self.trainable)[0]
    snapshot.stage(version, params)

  def agree_to_stop(self, stop: bool) -> bool:
    """Whether any process of the run wants to stop; `stop` itself within one process.

    Across processes every process's flag is reduced over the learner mesh (a collective:
    the gradient lane calls it before every update, so all processes stop after the same
    one and their checkpoints agree).
    """
    if not self.placement.spans_processes:
      return stop
    local = len(self.placement.mesh("learner").local_devices)
    flags = self.placement.put_batch(np.full((local,), int(stop), np.int32), "learner")
    return bool(np.asarray(parallel.local_replica(_any(flags))))

  def distribute(self, params):
    """Learner params onto the actor mesh in the actor's sharding (a new copy unless the
    planes share devices and layout)."""
    return self.placement.put_state(params, "actor")

  def distribute_into(self, actor: memory.WeightBuffer, version: int, params) -> None:
    """Copies learner params into the actors' incoming weights (in place), as `version`."""
    actor.stage(version, self.distribute(params))
