"""The asynchronous pipeline: four lanes, each its own host thread, on their plane meshes.

  sampling      steps whichever env group has actions waiting (sim mesh) and sends the
                result to inference; with >= 2 groups one simulates while another is acted on
  inference     acts on each group's newest observations with the newest weights it holds
                (actor mesh), records the step into the group's rollout slot, and hands full
                slots to the gradient lane
  gradient      one update per full slot (learner mesh), then publishes a params snapshot
  distribution  copies each newest snapshot onto the actor mesh and publishes it, versioned

Data plane (bounded channels): env steps (sampling -> inference), actions (inference ->
sampling), full slots (inference -> gradient), free slots (gradient -> inference). Control
plane (latest-wins mailboxes): learner weights (gradient -> distribution) and actor weights
(distribution -> inference). The inference lane swaps to a newer version between two steps
without waiting, so every step is tagged with the version that acted and the learner corrects
for the lag (decoupled PPO, `rl.max_staleness`).

Every lane waits only on channels with timeouts that watch the shared stop event: an error
in any lane stops all four (`lanes.Supervisor`).
"""

import threading
from typing import Optional

import jax

from dvla_jax.parallel import Placement
from dvla_jax.swimlanes import stages as stages_lib
from dvla_jax.swimlanes.channels import Channel
from dvla_jax.swimlanes.channels import Mailbox
from dvla_jax.swimlanes.lanes import FaultPlan
from dvla_jax.swimlanes.lanes import Supervisor
from dvla_jax.swimlanes.sync import UpdateFn
from dvla_jax.swimlanes.tracing import Tracer
from dvla_jax.training import steps
from dvla_jax.training.builders import Components


class AsyncPipeline:
  """Runs the four lanes; `run` returns the train state when done, stopped or failed."""

  def __init__(self, comp: Components, placement: Placement, tracer: Tracer, rng: jax.Array,
               faults: FaultPlan = FaultPlan(), poison: stages_lib.Poison = stages_lib.Poison(),
               join_timeout_s: Optional[float] = None):
    """Args:
      comp: the run's components (at least two env groups).
      placement: the plane meshes.
      tracer: records every lane's spans.
      rng: the training key.
      faults: test hook: a lane that raises after some work.
      poison: test hook: NaN rewards for some updates.
      join_timeout_s: how long `run` waits for the lanes after a stop (default
        `swimlanes.stall_timeout_s`: a lane finishes the computation it is in, e.g. an
        update, before it sees the stop; the others return within `swimlanes.poll_s`).
    """
    if len(comp.groups) < 2:
      raise ValueError("the async pipeline needs swimlanes.env_groups >= 2")
    self.comp = comp
    self.placement = placement
    self.tracer = tracer
    self.faults = faults
    self.join_timeout_s = join_timeout_s or comp.config.swimlanes.stall_timeout_s
    self.sampler = stages_lib.Sampler(comp, placement, rng)
    self.stages = stages_lib.Stages(comp, placement, rng, poison)
    self.state: Optional[steps.TrainState] = None
    self.iteration = 0
    self.supervisor: Optional[Supervisor] = None
    self._lock = threading.Lock()
    self._learner_version = 0
    self._actor_version = 0
    self._lag_sum = 0.0
    self._acts = 0
    self._swaps = 0

  def stats(self) -> dict[str, float]:
    """Actor-side metrics since the previous call: version in use, mean lag, swaps."""
    with self._lock:
      lag = self._lag_sum / self._acts if self._acts else 0.0
      stats = {"actor/version": float(self._actor_version), "actor/version_lag": lag,
               "actor/weight_swaps": float(self._swaps)}
      self._lag_sum, self._acts, self._swaps = 0.0, 0, 0
    return stats

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
    cfg = self.comp.config.swimlanes
    num_groups = len(self.comp.groups)
    num_slots = cfg.num_slots or num_groups + 1
    self.state, self.iteration = train_state, start
    self._learner_version = self._actor_version = start
    sup = self.supervisor = Supervisor(stop)
    if start >= total or stop.is_set():
      return self.state, self.iteration

    def channel(name, size):
      return Channel(name, size, stop, cfg.poll_s, cfg.stall_timeout_s)

    env_steps = channel("env steps", num_groups + cfg.queue_size)
    actions = channel("actions", num_groups + cfg.queue_size)
    full = channel("full slots", num_slots)
    ring = stages_lib.SlotRing(self.comp, self.placement, num_slots, channel("free", num_slots))
    learner_box = Mailbox("learner weights", stop, cfg.poll_s, cfg.stall_timeout_s)
    actor_box = Mailbox("actor weights", stop, cfg.poll_s, cfg.stall_timeout_s)
    learner_box.put(start, self.stages.snapshot(self.state))

    sup.spawn("distribution", lambda: self._distribution(learner_box, actor_box))
    sup.spawn("sampling", lambda: self._sampling(env_steps, actions, start))
    sup.spawn("inference", lambda: self._inference(env_steps, actions, full, ring, actor_box))
    sup.spawn("gradient", lambda: self._gradient(full, ring, learner_box, total, on_update, stop))
    # Short waits keep the main thread responsive to signals (SIGTERM sets `stop`).
    while not stop.is_set() and sup.alive():
      stop.wait(0.1)
    sup.join(self.join_timeout_s)
    return self.state, self.iteration

  # -- Lanes ------------------------------------------------------------------------------

  def _sampling(self, env_steps: Channel, actions: Channel, start: int) -> None:
    tr = self.tracer
    with tr.span("sampling", "reset"):
      for g in range(len(self.comp.groups)):
        env_steps.put((g, jax.block_until_ready(self.sampler.reset(g, round_=start))))
    done = 0
    while True:
      with tr.wait("sampling", "wait actions"):
        g, acts = actions.get()
      with tr.span("sampling", f"env_step g{g}"):
        result = jax.block_until_ready(self.sampler.step(g, acts))
      done += 1
      self.faults.check("sampling", done)
      with tr.wait("sampling", "send env step"):
        env_steps.put((g, result))

  def _inference(self, env_steps: Channel, actions: Channel, full: Channel,
                 ring: stages_lib.SlotRing, actor_box: Mailbox) -> None:
    tr, st = self.tracer, self.stages
    horizon = self.comp.config.rl.rollout_length
    num_groups = len(self.comp.groups)
    with tr.wait("inference", "wait weights"):
      version, params = actor_box.wait_newer(-1)
    pending = [None] * num_groups  # (obs, ActOutput, version) awaiting the env's answer.
    slots = [None] * num_groups
    filled = [0] * num_groups
    done = 0
    while True:
      with tr.wait("inference", "wait env step"):
        g, result = env_steps.get()
      newest, new_params = actor_box.latest()
      if newest > version:  # Swap between steps; nothing waits for the transfer.
        version, params = newest, new_params
        with self._lock:
          self._swaps += 1
          self._actor_version = version
      if pending[g] is not None and slots[g] is None:
        with tr.wait("inference", "wait free slot"):
          slots[g] = ring.acquire()
      with tr.span("inference", f"act g{g}"):
        result = st.to_actor(result)
        if pending[g] is not None:
          obs, out, acted = pending[g]
          slots[g] = st.record(slots[g], filled[g], obs, out, acted, result)
          filled[g] += 1
        out = st.act(params, result.obs, st.act_key(g, done))
        acts = jax.block_until_ready(st.actions_to_sim(out, g))
        if filled[g] == horizon:
          jax.block_until_ready(slots[g])
      done += 1
      with self._lock:
        self._lag_sum += self._learner_version - version
        self._acts += 1
      self.faults.check("inference", done)
      if filled[g] == horizon:
        # The value of the observation after the slot's last step bootstraps its returns.
        with tr.wait("inference", "send slot"):
          full.put((slots[g], out.value, g))
        slots[g], filled[g] = None, 0
      with tr.wait("inference", "send actions"):
        actions.put((g, acts))
      pending[g] = (result.obs, out, version)

  def _gradient(self, full: Channel, ring: stages_lib.SlotRing, learner_box: Mailbox,
                total: int, on_update: UpdateFn, stop: threading.Event) -> None:
    tr, st = self.tracer, self.stages
    done = 0
    while self.iteration < total:
      with tr.wait("gradient", "wait slot"):
        slot, bootstrap, _ = full.get()
      it = self.iteration + 1
      with tr.span("gradient", f"update {it}"):
        state, metrics = st.learn(self.state, slot, bootstrap, it)
        jax.block_until_ready(state)
      # The update has read the slot: it can be filled again.
      self.state, self.iteration = state, it
      ring.release(slot)
      with tr.span("gradient", f"publish v{it}"):
        learner_box.put(it, jax.block_until_ready(st.snapshot(state)))
      with self._lock:
        self._learner_version = it
      on_update(it, state, metrics)
      done += 1
      self.faults.check("gradient", done)
    stop.set()  # Done: the other lanes return at their next wait.

  def _distribution(self, learner_box: Mailbox, actor_box: Mailbox) -> None:
    tr, st = self.tracer, self.stages
    version, done = -1, 0
    while True:
      with tr.wait("distribution", "wait weights"):
        version, params = learner_box.wait_newer(version)
      with tr.span("distribution", f"transfer v{version}"):
        params = jax.block_until_ready(st.distribute(params))
      actor_box.put(version, params)
      done += 1
      self.faults.check("distribution", done)
