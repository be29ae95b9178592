"""The asynchronous pipeline: four lanes, each its own host thread, on their plane meshes.

  sampling      steps whichever env group has actions waiting (sim mesh) and sends the
                result to inference; with >= 2 groups one simulates while another is acted on
  inference     acts on each group's newest observations with the newest weights it holds
                (actor mesh), records the step into the group's rollout slot, and hands full
                slots to the gradient lane
  gradient      one update per full slot (learner mesh), then copies the params into the
                learner's snapshot buffer and announces the version
  distribution  copies each newest snapshot into the actors' incoming weight buffer

Data plane (bounded channels): env steps (sampling -> inference), actions (inference ->
sampling), full slots (inference -> gradient); the free list of the rollout slot pool
(gradient -> inference). Control plane: a latest-wins mailbox of learner versions (gradient
-> distribution) and two weight double buffers (`memory.WeightBuffer`), the learner's
snapshot and the actors' weights. The inference lane swaps to a newer version between two
steps without waiting, so every step is tagged with the version that acted and the learner
corrects for the lag (decoupled PPO, `rl.max_staleness`).

Memory: the rollout slots, the train state and the two weight buffers are allocated once at
start-up (`memory.report` logs their bytes per pool and per device) and only ever rewritten
by donating updates, so the steady state allocates no new device buffers beyond the
short-lived env steps and actions in flight. `AsyncPipeline.paused` stops the other lanes at
a consistent cut for a census of live device memory.

Every lane waits only on channels and pools with timeouts that watch the shared stop event:
an error in any lane stops all four (`lanes.Supervisor`).

Across processes (the learner mesh spans them, `Placement.spans_processes`) the gradient lane
issues every collective that crosses processes (updates, the weight gather in `publish`, the
evaluation and checkpoint callbacks, and before each update the agreement to stop), so every
process issues them in the same order; the other lanes work on their own process's devices.
A stop (SIGTERM) in any process stops all of them after the same update.
"""

import contextlib
import threading
import time
from typing import Any, Callable, Iterator, Optional

import jax

from dvla_jax import memory
from dvla_jax.parallel import Placement
from dvla_jax.programs import steps
from dvla_jax.swimlanes import stages as stages_lib
from dvla_jax.swimlanes.channels import Channel
from dvla_jax.swimlanes.channels import Mailbox
from dvla_jax.swimlanes.channels import StallError
from dvla_jax.swimlanes.channels import Stopped
from dvla_jax.swimlanes.channels import wait_for
from dvla_jax.swimlanes.interface import LanePrograms
from dvla_jax.swimlanes.lanes import FaultPlan
from dvla_jax.swimlanes.lanes import Supervisor
from dvla_jax.swimlanes.sync import UpdateFn
from dvla_jax.swimlanes.tracing import Tracer


class AsyncPipeline:
  """Runs the four lanes; `run` returns the train state when done, stopped or failed.

  Attributes:
    pools: after `run` starts, (static pool, rollout slot pool) of the run.
    memory_report: `memory.report` of the pools at start-up.
  """

  def __init__(self, components: LanePrograms, placement: Placement, tracer: Tracer, rng: jax.Array,
               faults: FaultPlan = FaultPlan(), poison: stages_lib.Poison = stages_lib.Poison(),
               join_timeout_s: Optional[float] = None):
    """Args:
      components: the run's components (at least two env groups).
      placement: the plane meshes.
      tracer: records every lane's spans.
      rng: the training key.
      faults: test hook: a lane that raises after some work.
      poison: test hook: NaN rewards for some updates.
      join_timeout_s: how long `run` waits for the lanes after a stop (default
        `swimlanes.stall_timeout_s`: a lane finishes the computation it is in, e.g. an
        update, before it sees the stop; the others return within `swimlanes.poll_s`).
    """
    if len(components.groups) < 2:
      raise ValueError("the async pipeline needs swimlanes.env_groups >= 2")
    self.components = components
    self.placement = placement
    self.tracer = tracer
    self.faults = faults
    self.join_timeout_s = join_timeout_s or components.config.swimlanes.stall_timeout_s
    curriculum = stages_lib.task_curriculum(components)
    self.sampler = stages_lib.Sampler(components, placement, rng, curriculum)
    self.policy = stages_lib.PolicyLanes(components, placement, rng, poison, curriculum)
    self.state: Optional[steps.TrainState] = None
    self.iteration = 0
    self.supervisor: Optional[Supervisor] = None
    self.pools: Optional[tuple[memory.StaticPool, memory.SlotPool]] = None
    self.memory_report: dict[str, Any] = {}
    self._lock = threading.Lock()
    self._learner_version = 0
    self._actor_version = 0
    self._lag_sum = 0.0
    self._acts = 0
    self._swaps = 0
    # `paused`: lanes park at their loop heads while `_hold` is set; the distribution lane
    # holds `_transfer_lock` while it copies weights.
    self._hold = False
    self._parked: set[str] = set()
    self._hold_cond = threading.Condition()
    self._transfer_lock = threading.Lock()
    self._stop: Optional[threading.Event] = None

  def stats(self) -> dict[str, float]:
    """Actor-side metrics since the previous call: version in use, mean lag, swaps; and the
    bytes each weight version sends to the actors."""
    with self._lock:
      lag = self._lag_sum / self._acts if self._acts else 0.0
      stats = {"actor/version": float(self._actor_version), "actor/version_lag": lag,
               "actor/weight_swaps": float(self._swaps),
               "weights/bytes_per_version": float(self.policy.sync_bytes)}
      self._lag_sum, self._acts, self._swaps = 0.0, 0, 0
    return stats

  @contextlib.contextmanager
  def paused(self) -> Iterator[None]:
    """Holds the sampling, inference and distribution lanes at a consistent cut.

    Inside, no lane other than the caller's dispatches device work: inference waits at the
    top of its loop (or for a free slot, before it touched the env step it took), sampling
    has stepped every env group whose actions were sent (so every group's latest env step
    waits for inference), and no weight transfer is in flight. Meant
    for a census of live device memory from `on_update` (the gradient lane); the lanes
    resume on exit.

    Raises:
      Stopped: the run stopped while waiting for the lanes.
      StallError: the lanes did not park within `swimlanes.stall_timeout_s`.
    """
    cfg = self.components.config.swimlanes
    start = time.monotonic()
    with self._hold_cond:
      self._hold = True
      while self._parked != {"sampling", "inference"}:
        if self._stop is not None and self._stop.is_set():
          self._hold = False
          raise Stopped("pause")
        if time.monotonic() - start > cfg.stall_timeout_s:
          self._hold = False
          raise StallError(f"pause: lanes {self._parked} parked after {cfg.stall_timeout_s:g}s")
        self._hold_cond.wait(cfg.poll_s)
    try:
      with self._transfer_lock:
        yield
    finally:
      with self._hold_cond:
        self._hold = False
        self._hold_cond.notify_all()

  def _holding(self) -> bool:
    return self._hold

  def _park(self, lane: str, ready: Callable[[], bool] = lambda: True) -> None:
    """At a lane's loop head: waits while `paused` holds the lanes (once `ready()`)."""
    if not self._hold:
      return
    poll_s = self.components.config.swimlanes.poll_s
    with self._hold_cond:
      if not (self._hold and ready()):
        return
      self._parked.add(lane)
      self._hold_cond.notify_all()
      try:
        while self._hold:
          if self._stop.is_set():
            raise Stopped(f"{lane} parked")
          self._hold_cond.wait(poll_s)
      finally:
        self._parked.discard(lane)

  def run(self, train_state: steps.TrainState, start: int, total: int, on_update: UpdateFn,
          stop: threading.Event) -> tuple[steps.TrainState, int]:
    """Runs the lanes until `total` updates are done, `stop` is set or a lane fails.

    Args:
      train_state: the learner state (donated to the first update).
      start: iterations already done (the version of `train_state`'s params).
      total: the iteration to stop at.
      on_update: called on the gradient lane after every update with (iteration, state,
        device metrics); an exception there fails the gradient lane.
      stop: the shared stop event (SIGTERM sets it).

    Returns:
      (train state, iterations done).

    Raises:
      LaneError: the first lane failure, after all lanes stopped.
    """
    cfg = self.components.config.swimlanes
    num_groups = len(self.components.groups)
    num_slots = cfg.num_slots or num_groups + 1
    self.state, self.iteration = train_state, start
    self._learner_version = self._actor_version = start
    self._stop = stop
    sup = self.supervisor = Supervisor(stop)
    if start >= total or stop.is_set():
      return self.state, self.iteration

    def channel(name, size):
      return Channel(name, size, stop, cfg.poll_s, cfg.stall_timeout_s)

    env_steps = channel("env steps", num_groups + cfg.queue_size)
    actions = channel("actions", num_groups + cfg.queue_size)
    full = channel("full slots", num_slots)
    learner_box = Mailbox("learner versions", stop, cfg.poll_s, cfg.stall_timeout_s)
    # The device memory of the run, allocated once.
    slots = self.policy.slot_pool(num_slots)
    snapshot, actor_weights = self.policy.weight_buffers(self.state, start)
    static = memory.StaticPool()
    static.register("train_state", lambda: [self.state])
    static.register("learner_snapshot", snapshot.trees)
    static.register("actor_weights", actor_weights.trees)
    self.pools = (static, slots)
    self.memory_report = memory.report(static, slots, log=jax.process_index() == 0)

    sup.spawn("distribution", lambda: self._distribution(learner_box, snapshot, actor_weights,
                                                         start))
    sup.spawn("sampling", lambda: self._sampling(env_steps, actions, start))
    sup.spawn("inference", lambda: self._inference(env_steps, actions, full, slots,
                                                   actor_weights, stop))
    sup.spawn("gradient", lambda: self._gradient(full, slots, snapshot, learner_box, total,
                                                 on_update, stop))
    # Short waits keep the main thread responsive to signals (SIGTERM sets `stop`).
    while not stop.is_set() and sup.alive():
      stop.wait(0.1)
    sup.join(self.join_timeout_s)
    return self.state, self.iteration

  # -- Lanes ------------------------------------------------------------------------------

  def _sampling(self, env_steps: Channel, actions: Channel, start: int) -> None:
    tracer = self.tracer
    with tracer.span("sampling", "reset"):
      for g in range(len(self.components.groups)):
        env_steps.put((g, jax.block_until_ready(self.sampler.reset(g, round_=start))))
    # Parks only once inference has and every sent action has been stepped.
    drained = lambda: "inference" in self._parked and actions.qsize() == 0  # noqa: E731
    done = 0
    while True:
      self._park("sampling", drained)
      with tracer.wait("sampling", "wait actions"):
        item = actions.get(until=lambda: self._hold and drained())
      if item is None:
        continue
      g, acts = item
      with tracer.span("sampling", f"env_step g{g}"):
        result = jax.block_until_ready(self.sampler.step(g, acts))
      done += 1
      self.faults.check("sampling", done)
      with tracer.wait("sampling", "send env step"):
        env_steps.put((g, result))
      # Locals would keep the last step's device arrays alive while the lane waits.
      item = acts = result = None

  def _inference(self, env_steps: Channel, actions: Channel, full: Channel,
                 pool: memory.SlotPool, weights: memory.WeightBuffer,
                 stop: threading.Event) -> None:
    tracer, policy = self.tracer, self.policy
    cfg = self.components.config
    horizon = cfg.rl.rollout_length
    num_groups = len(self.components.groups)
    version, params = weights.take_newest()
    pending = [None] * num_groups  # (obs, ActOutput, version) awaiting the env's answer.
    slots = [None] * num_groups
    filled = [0] * num_groups
    done = 0
    while True:
      self._park("inference")
      with tracer.wait("inference", "wait env step"):
        item = env_steps.get(until=self._holding)
      if item is None:
        continue
      g, result = item
      # Swap between steps; nothing waits for the transfer. `params` stays valid until the
      # next call: the distribution lane only writes the copy not held here.
      newest, params = weights.take_newest()
      if newest > version:
        version = newest
        with self._lock:
          self._swaps += 1
          self._actor_version = version
      if pending[g] is not None and slots[g] is None:
        # Backpressure. The lane may park here for `paused`: it has only taken the env step
        # from its channel, so device memory is as if it were parked at the loop head.
        with tracer.wait("inference", "wait free slot"):
          slots[g] = wait_for(pool.acquire, "rollout slots", stop, cfg.swimlanes.poll_s,
                              cfg.swimlanes.stall_timeout_s, idle=lambda: self._park("inference"))
      with tracer.span("inference", f"act g{g}"):
        result = policy.to_actor(result)
        if pending[g] is not None:
          obs, out, acted = pending[g]
          slots[g] = policy.record(slots[g], filled[g], obs, out, acted, result)
          filled[g] += 1
        out = policy.act(params, result.obs, policy.act_key(g, done))
        acts = jax.block_until_ready(policy.actions_to_sim(out, g))
        if filled[g] == horizon:
          # The value of the observation after the slot's last step bootstraps its returns.
          slots[g] = jax.block_until_ready(policy.record_bootstrap(slots[g], out.value))
      done += 1
      with self._lock:
        self._lag_sum += self._learner_version - version
        self._acts += 1
      self.faults.check("inference", done)
      if filled[g] == horizon:
        with tracer.wait("inference", "send slot"):
          full.put((slots[g], g))
        slots[g], filled[g] = None, 0
      with tracer.wait("inference", "send actions"):
        actions.put((g, acts))
      pending[g] = (result.obs, out, version)
      item = result = out = acts = obs = None

  def _gradient(self, full: Channel, pool: memory.SlotPool, snapshot: memory.WeightBuffer,
                learner_box: Mailbox, total: int, on_update: UpdateFn,
                stop: threading.Event) -> None:
    tracer, policy = self.tracer, self.policy
    refills = policy.refills_grpo()
    done = 0
    while self.iteration < total:
      with tracer.wait("gradient", "wait slot"):
        try:
          item = full.get()
        except Stopped:
          if not self.placement.spans_processes:
            raise
          item = None  # Stop only with the other processes, after the same update.
      if policy.agree_to_stop(item is None):
        if item is not None:
          pool.release(item[0])
        break
      slot, item = item[0], None
      it = self.iteration + 1
      group_valid, slots, collected = None, 1, None
      if refills:  # GRPO: more slots until every group position holds a mixed group.
        batch = policy.grpo_start(slot)
        while not batch.full() and batch.slots <= refills:
          with tracer.wait("gradient", "wait refill slot"):
            try:
              extra = full.get()[0]
            except Stopped:
              break  # Learn from what is there; the loop head sees the stop.
          with tracer.span("gradient", f"refill {it}"):
            batch = policy.grpo_add(batch, extra)
            jax.block_until_ready(batch.group_valid)
          pool.release(extra)
          del extra
        slot, group_valid, slots = batch.slot, batch.group_valid, batch.slots
        collected = batch.rollout_metrics()
        del batch
      with tracer.span("gradient", f"update {it}"):
        state, metrics = policy.learn(self.state, slot, it, group_valid, collected)
        metrics["learner/rollout_slots"] = slots
        jax.block_until_ready(state)
      # The update has read the slot: it can be filled again.
      self.state, self.iteration = state, it
      pool.release(slot)
      del slot
      with tracer.span("gradient", f"publish v{it}"):
        policy.publish(snapshot, it, state)
      learner_box.put(it, None)
      with self._lock:
        self._learner_version = it
      on_update(it, state, metrics)
      done += 1
      self.faults.check("gradient", done)
    stop.set()  # Done: the other lanes return at their next wait.

  def _distribution(self, learner_box: Mailbox, snapshot: memory.WeightBuffer,
                    actor: memory.WeightBuffer, start: int) -> None:
    tracer, policy = self.tracer, self.policy
    version, done = start, 0
    while True:
      with tracer.wait("distribution", "wait weights"):
        learner_box.wait_newer(version)
      with self._transfer_lock, tracer.span("distribution", f"transfer v{learner_box.version}"):
        # The snapshot copy taken here is not written until the next `take_newest`.
        version, params = snapshot.take_newest()
        policy.distribute_into(actor, version, params)
        del params
      done += 1
      self.faults.check("distribution", done)
