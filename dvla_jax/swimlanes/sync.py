"""The synchronous baseline: roll out one env group for T steps, update, repeat, on one thread.

It calls the same stages (`stages.py`), and so the same compiled programs, as the four
asynchronous lanes, one after another, so async and sync compare on equal terms. Iteration i
uses env group i mod G; every rollout acts with the newest weights (no staleness). Spans are
recorded under the lane that would run them, so the sync timeline shows the per-iteration
time of each lane, the input of the benchmark's bound.
"""

import threading
from typing import Callable

import jax

from dvla_jax.parallel import Placement
from dvla_jax.programs import steps
from dvla_jax.swimlanes import stages as stages_lib
from dvla_jax.swimlanes.interface import LanePrograms
from dvla_jax.swimlanes.lanes import FaultPlan
from dvla_jax.swimlanes.tracing import Tracer

UpdateFn = Callable[[int, steps.TrainState, dict], None]


class SyncPipeline:
  """Runs the stages in sequence; `run` returns the train state when done or stopped."""

  def __init__(self, components: LanePrograms, placement: Placement, tracer: Tracer, rng: jax.Array,
               faults: FaultPlan = FaultPlan(), poison: stages_lib.Poison = stages_lib.Poison()):
    """Args:
      components: the run's components.
      placement: the plane meshes.
      tracer: records spans (a disabled tracer also skips the waits that make spans exact).
      rng: the training key.
      faults: test hook (a lane name counts that stage's work as in the async pipeline).
      poison: test hook (NaN rewards for some updates).
    """
    self.components = components
    self.placement = placement
    self.tracer = tracer
    self.faults = faults
    curriculum = stages_lib.task_curriculum(components)
    self.sampler = stages_lib.Sampler(components, placement, rng, curriculum)
    self.policy = stages_lib.PolicyLanes(components, placement, rng, poison, curriculum)
    self.iteration = 0
    self.state = None

  def _ready(self, x):
    # Spans are only exact when each stage finishes before the next one starts.
    return jax.block_until_ready(x) if self.tracer.enabled else x

  def stats(self) -> dict[str, float]:
    """Actor-side metrics: the sync actor always acts with the newest weights."""
    return {"actor/version": float(self.iteration), "actor/version_lag": 0.0,
            "weights/bytes_per_version": float(self.policy.sync_bytes)}

  def run(self, train_state: steps.TrainState, start: int, total: int, on_update: UpdateFn,
          stop: threading.Event) -> tuple[steps.TrainState, int]:
    """Runs iterations start+1 .. total (or until `stop` is set).

    Args:
      train_state: the learner state (donated to the first update).
      start: iterations already done.
      total: the iteration to stop at.
      on_update: called after every update with (iteration, state, device metrics).
      stop: checked between iterations (SIGTERM sets it).

    Returns:
      (train state, iterations done).
    """
    components, tracer, policy = self.components, self.tracer, self.policy
    num_groups = len(components.groups)
    self.state, self.iteration = train_state, start
    refills = policy.refills_grpo()
    pool = policy.slot_pool(2 if refills else 1)
    with tracer.span("distribution", "transfer"):
      snapshot, weights = policy.weight_buffers(self.state, start)
      params = self._ready(weights.take_newest()[1])
    with tracer.span("sampling", "reset"):
      for g in range(num_groups):
        self._ready(self.sampler.reset(g, round_=start))
    counts = {"sampling": 0, "inference": 0, "gradient": 0, "distribution": 1}
    for it in range(start, total):
      if policy.agree_to_stop(stop.is_set()):  # Across processes: all stop at the same iteration.
        break
      g = it % num_groups
      # Action keys: slot k of iteration `it` (k > 0 only when refilling) acts with keys
      # (it * (refills + 1) + k) * T + t, unique across iterations and resumes.
      slot = self._rollout(pool.acquire(timeout=0), g, params, it, counts,
                           it * (refills + 1))
      group_valid, slots, collected = None, 1, None
      if refills:  # GRPO: more slots until every group position holds a mixed group.
        batch = policy.grpo_start(slot)
        while not batch.full() and batch.slots <= refills:
          extra = self._rollout(pool.acquire(timeout=0), g, params, it, counts,
                                it * (refills + 1) + batch.slots)
          with tracer.span("gradient", f"refill {it + 1}"):
            batch = policy.grpo_add(batch, extra)
            self._ready(batch.group_valid)
          pool.release(extra)
        slot, group_valid, slots = batch.slot, batch.group_valid, batch.slots
        collected = batch.rollout_metrics()
      with tracer.span("gradient", f"update {it + 1}"):
        self.state, metrics = policy.learn(self.state, slot, it + 1, group_valid, collected)
        metrics["learner/rollout_slots"] = slots
        self._ready(self.state)
      pool.release(slot)
      self.iteration = it + 1
      on_update(it + 1, self.state, metrics)
      counts["gradient"] += 1
      self.faults.check("gradient", counts["gradient"])
      with tracer.span("distribution", f"transfer v{it + 1}"):
        # The same in-place copies as the async lanes: snapshot, then the actors' buffer.
        policy.publish(snapshot, it + 1, self.state)
        policy.distribute_into(weights, *snapshot.take_newest())
        params = weights.take_newest()[1]
      counts["distribution"] += 1
      self.faults.check("distribution", counts["distribution"])
    return self.state, self.iteration

  def _rollout(self, slot, g: int, params, version: int, counts: dict, key_slot: int):
    """Fills `slot` with one rollout of env group `g` acting with `params` (action keys
    numbered from `key_slot * T`); returns it."""
    tracer, policy = self.tracer, self.policy
    horizon = self.components.config.rl.rollout_length
    result = self.sampler.current(g)
    for t in range(horizon):
      with tracer.span("inference", f"act g{g}"):
        obs = policy.to_actor(result).obs
        out = policy.act(params, obs, policy.act_key(g, key_slot * horizon + t))
        actions = self._ready(policy.actions_to_sim(out, g))
      counts["inference"] += 1
      self.faults.check("inference", counts["inference"])
      with tracer.span("sampling", f"env_step g{g}"):
        result = self._ready(self.sampler.step(g, actions))
      counts["sampling"] += 1
      self.faults.check("sampling", counts["sampling"])
      with tracer.span("inference", f"record g{g}"):
        slot = self._ready(policy.record(slot, t, obs, out, version, policy.to_actor(result)))
    with tracer.span("inference", f"bootstrap g{g}"):
      bootstrap = self.components.value(params, policy.to_actor(result).obs)
      return self._ready(policy.record_bootstrap(slot, bootstrap))
