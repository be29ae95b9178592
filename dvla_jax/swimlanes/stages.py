"""The unit of work of each lane, shared by the synchronous and the asynchronous pipeline.

Both pipelines call exactly these functions, and through them the same compiled programs of
`Components`; they differ only in whether one thread runs the stages one after another or
four threads run them at the same time.

  sampling      `Sampler.reset` / `Sampler.step`: env groups on their sim devices
  inference     `Stages.act` and `Stages.record`: policy forward, rollout slot writes
  gradient      `Stages.learn`: a rollout slot onto the learner mesh, one update
  distribution  `Stages.distribute`: learner weights onto the actor mesh
"""

import dataclasses
from typing import Any, Optional

import jax

from dvla_jax.parallel import Placement
from dvla_jax.swimlanes.channels import Channel
from dvla_jax.training import steps
from dvla_jax.training.builders import Components

# Independent random streams per stage, folded into the run's training key.
_RESET, _ROLLOUT, _ACT, _LEARN = range(4)


@dataclasses.dataclass(frozen=True)
class Poison:
  """Test hook: updates `start` .. `start + count - 1` (1-based iterations) get NaN rewards."""

  start: int = -1
  count: int = 1

  def applies(self, iteration: int) -> bool:
    return self.start >= 0 and self.start <= iteration < self.start + self.count


class SlotRing:
  """A fixed ring of rollout slots on the actor mesh; an empty free list is backpressure.

  The slots are allocated once; the inference lane fills one per env group with donated
  writes (in place) and the gradient lane hands it back once its update has read it.
  """

  def __init__(self, comp: Components, placement: Placement, num_slots: int, free: Channel):
    abstract = jax.eval_shape(comp.empty_slot)
    shardings = jax.tree.map(
        lambda x: placement.batch_sharding("actor", tuple(x.shape), batch_axis=1), abstract)
    make = jax.jit(comp.empty_slot, out_shardings=shardings)
    self.num_slots = num_slots
    self.bytes_per_slot = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract))
    self.free = free
    for _ in range(num_slots):
      free.put(make())

  def acquire(self) -> steps.RolloutSlot:
    """A free slot (waits while all are in use)."""
    return self.free.get()

  def release(self, slot: steps.RolloutSlot) -> None:
    self.free.put(slot)


class Sampler:
  """The env groups' states and the steps of the sampling lane."""

  def __init__(self, comp: Components, placement: Placement, rng: jax.Array):
    self.comp = comp
    self.placement = placement
    self.rng = rng
    self.states: list[Any] = [None] * len(comp.groups)
    self.steps_in_slot = [0] * len(comp.groups)
    self.rollouts = [0] * len(comp.groups)

  def _key(self, purpose: int, group: int, count: int) -> jax.Array:
    key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(self.rng, purpose), group),
                             count)
    return self.placement.put_sim(key, group)

  def reset(self, group: int, round_: int = 0) -> steps.EnvStep:
    """Fresh episodes for every env of `group` (on its sim device); returns their EnvStep."""
    self.states[group] = self.comp.groups[group].reset(self._key(_RESET, group, round_))
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
    g = self.comp.groups[group]
    state = g.env_step(self.states[group], actions)
    result = steps.env_step_result(state)
    self.steps_in_slot[group] += 1
    if self.steps_in_slot[group] == self.comp.config.rl.rollout_length:
      self.steps_in_slot[group] = 0
      self.rollouts[group] += 1
      state = g.start_rollout(state, self._key(_ROLLOUT, group, self.rollouts[group]),
                              self.comp.config.rl.algo)
      result = result.replace(obs=state.obs)
    self.states[group] = state
    return result


class Stages:
  """Inference, gradient and distribution work on the plane meshes."""

  def __init__(self, comp: Components, placement: Placement, rng: jax.Array,
               poison: Optional[Poison] = None):
    self.comp = comp
    self.placement = placement
    self.rng = rng
    self.poison = poison or Poison()

  def act_key(self, group: int, count: int) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(self.rng, _ACT), group),
                              count)

  def to_actor(self, result: steps.EnvStep) -> steps.EnvStep:
    """An EnvStep from a sim device onto the actor mesh, split along the env axis."""
    return self.placement.put_batch(result, "actor", batch_axis=0)

  def act(self, params, obs, rng: jax.Array) -> steps.ActOutput:
    """Policy forward on the actor mesh."""
    return self.comp.act(params, obs, rng)

  def actions_to_sim(self, out: steps.ActOutput, group: int) -> jax.Array:
    return self.placement.put_sim(out.actions, group)

  def record(self, slot: steps.RolloutSlot, t: int, obs, out: steps.ActOutput, version: int,
             result: steps.EnvStep) -> steps.RolloutSlot:
    """Writes step `t` into `slot` in place (the slot passed in is consumed)."""
    return self.comp.write_step(slot, t, obs, out, version, result)

  def learn(self, state: steps.TrainState, slot: steps.RolloutSlot, bootstrap: jax.Array,
            iteration: int) -> tuple[steps.TrainState, dict[str, jax.Array]]:
    """One update on a full slot; `iteration` (1-based) is the update's number.

    The train state passed in is donated.
    """
    slot = self.placement.put_batch(slot, "learner", batch_axis=1)
    bootstrap = self.placement.put_batch(bootstrap, "learner", batch_axis=0)
    if self.poison.applies(iteration):
      slot = self.comp.poison(slot)
    metrics = self.comp.slot_metrics(slot)
    rng = jax.random.fold_in(jax.random.fold_in(self.rng, _LEARN), iteration)
    state, learner_metrics = self.comp.update(state, slot.transition, bootstrap, rng)
    metrics.update(learner_metrics)
    return state, metrics

  def snapshot(self, state: steps.TrainState):
    """A copy of the learner params that the next (donating) update cannot delete."""
    return self.comp.copy_params(state.params)

  def distribute(self, params):
    """Learner params onto the actor mesh in the actor's sharding."""
    return self.placement.put_state(params, "actor")
