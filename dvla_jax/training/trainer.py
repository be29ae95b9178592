"""Trainer wiring: build, place, resume, run the pipeline, evaluate, log and checkpoint.

Library code reports through `progress_fn(step, metrics)`; `main` passes a writer that sends
them to TensorBoard, `metrics.jsonl` and the console.

An iteration is one learner update on one rollout slot (T steps of one env group; in a run
of several processes, one slot from each process, learnt as one batch). The
pipeline (`config.pipeline`, sync or async) calls back after every update; the callback
counts skipped (non-finite) updates, logs, evaluates and checkpoints. How a run ends:
  * all iterations done: final checkpoint and evaluation;
  * SIGTERM: the lanes stop, a checkpoint of the last finished update is written, and
    `train` returns normally (exit status 0); the next run resumes from it;
  * a lane fails, or `train.max_bad_updates` updates in a row are skipped: the error
    propagates (non-zero exit) and the last good checkpoint stays the newest.
"""

import contextlib
import os
import signal
import threading
import time
from typing import Callable, Optional

from absl import logging
import jax
import numpy as np

from dvla_jax import models
from dvla_jax import parallel
from dvla_jax.config import rng_streams
from dvla_jax.envs import mjx_env
from dvla_jax.programs import builders
from dvla_jax.programs import evaluation
from dvla_jax.swimlanes import pipeline as async_pipeline
from dvla_jax.swimlanes import stages
from dvla_jax.swimlanes import sync
from dvla_jax.swimlanes.lanes import FaultPlan
from dvla_jax.swimlanes.lanes import LaneError
from dvla_jax.swimlanes.tracing import Tracer
from dvla_jax.training import checkpoints
from dvla_jax.training import console
from dvla_jax.training import metrics as metrics_lib
from dvla_jax.training import warmstart

TRACE_FILE = "trace.json"


class BadUpdatesError(FloatingPointError):
  """Too many updates in a row had a non-finite loss or gradient."""


def train(config, workdir: str, progress_fn: Optional[Callable[[int, dict], None]] = None,
          stop: Optional[threading.Event] = None,
          components: Optional[builders.Components] = None) -> dict:
  """Trains to `config.train.iterations` iterations, resuming from `workdir` if it has a
  checkpoint.

  Args:
    config: a validated run config (see `default_config.py`).
    workdir: run directory for checkpoints, metrics.jsonl, TensorBoard files and trace.json.
    progress_fn: called with (iteration, metrics); defaults to a `MetricsWriter` on `workdir`.
    stop: setting it stops the run like SIGTERM does (checkpoint, then return).
    components: reuse components built by `builders.build` for a config that differs from
      `config` only in `train`, `testing` and `seed` fields or in the warm start's
      (`rl.warmstart_steps`, `sft.*`), which read `config` (saves the compilation).

  Returns:
    The metrics of the final evaluation (plus the iteration reached under "step", and
    "preempted": True when the run was stopped early).

  Raises:
    config_check.ConfigError: the placement needs devices that do not exist.
    LaneError, BadUpdatesError: the run failed; the newest checkpoint is the last good one.
  """
  os.makedirs(workdir, exist_ok=True)
  writer = None
  if progress_fn is None:
    writer = metrics_lib.MetricsWriter(workdir, config.train.iterations,
                                       wandb_project=config.train.wandb_project,
                                       config=config.to_dict())
    progress_fn = writer.write
  ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"),
                                  max_to_keep=config.train.keep_checkpoints)
  tracer = Tracer(config.swimlanes.trace, config.swimlanes.trace_max_spans)
  stop = stop or threading.Event()
  try:
    with _stop_on_sigterm(stop):
      return _Run(config, ckpt, progress_fn, tracer, stop).train(components)
  finally:
    if config.swimlanes.trace and jax.process_index() == 0:
      tracer.write(os.path.join(workdir, TRACE_FILE), {"pipeline": config.pipeline})
    ckpt.close()
    if writer is not None:
      writer.close()


@contextlib.contextmanager
def _stop_on_sigterm(stop: threading.Event):
  """Turns SIGTERM into a stop request while the run lasts (main thread only)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return

  def handler(signum, frame):
    del signum, frame
    logging.warning("SIGTERM: stopping the lanes and writing a checkpoint")
    stop.set()

  previous = signal.signal(signal.SIGTERM, handler)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


def init_backends(config) -> None:
  """Starts the simulator's backend before anything prints: Warp (env.impl='warp') without
  its no-GPU warning on machines that have no NVIDIA driver."""
  if config.env.impl == "warp":
    mjx_env.init_warp_quietly()


def summary(config) -> str:
  """One line saying what the run is: mode, task, model, pipeline, placement and devices."""
  p = config.placement
  mesh = lambda m: f"{m.data}x{m.fsdp}x{m.tensor}"  # noqa: E731
  params = models.count_params(models.get_preset(config.model.preset))
  mode = "sft" if config.mode == "sft" else f"rl {config.rl.algo}"
  devices = jax.devices()
  kinds = sorted({d.platform for d in devices})
  processes = jax.process_count()
  return (f"dvla_jax {mode} | task {config.env.task} | model {config.model.preset} "
          f"({params / 1e6:.2f}M params) | pipeline {config.pipeline} | placement "
          f"{p.mode}: sim {p.sim.devices}, actor {mesh(p.actor)}, learner {mesh(p.learner)} "
          f"(data x fsdp x tensor) | devices {len(devices)} {'+'.join(kinds)}"
          f"{f' over {processes} processes' if processes > 1 else ''}")


class _Run:
  """One call of `train`: the state the update callback needs between iterations."""

  def __init__(self, config, ckpt, progress_fn, tracer, stop):
    self.config = config
    self.ckpt = ckpt
    self.progress_fn = progress_fn
    self.tracer = tracer
    self.stop = stop
    self.skipped_total = 0
    self.skipped_in_a_row = 0
    self.last_saved = None
    self.result = {}
    self.compiling = None
    self.evaluated = False

  def train(self, components: Optional[builders.Components]) -> dict:
    config = self.config
    t0 = time.perf_counter()
    placement = builders.make_placement(config)
    components = components or builders.build(config)
    rng = jax.random.key(config.seed)
    init_rng = jax.random.fold_in(rng, rng_streams.INIT)
    abstract = jax.eval_shape(components.init_train_state, init_rng)
    init = jax.jit(components.init_train_state,
                   out_shardings=placement.state_shardings(abstract, "learner"))
    train_state = init(init_rng)
    self.env_steps = 0
    latest = self.ckpt.latest_step()
    if latest is not None:
      checkpoints.check_compatible(self.ckpt, config)
      train_state, meta = self.ckpt.restore(latest, train_state)
      self.env_steps = int(meta.get("env_steps", 0))
      self.last_saved = latest
      logging.info("resumed from %s at iteration %d", self.ckpt.directory, latest)
    elif config.rl.init_from:  # Warm start (e.g. from SFT): params only, fresh optimizer.
      train_state = train_state.replace(
          params=checkpoints.restore_policy_params(config.rl.init_from, train_state.params))
    start = int(train_state.step)
    total = config.train.iterations
    # Every process steps its own env groups; an update learns from one slot of each.
    self.steps_per_iter = (config.rl.rollout_length * components.envs_per_group *
                           placement.meshes.processes)
    self.placement = placement

    is_async = config.pipeline == "async"
    # Evaluation acts on one device of its own env group (a separate instance when the
    # sampling lane keeps every group busy).
    self.eval_device = placement.sim_device(0)
    self.eval_comp = components.for_group(components.eval_group(separate=is_async))
    self.eval_rng = jax.device_put(jax.random.fold_in(rng, rng_streams.EVAL), self.eval_device)
    train_rng = jax.random.fold_in(rng, rng_streams.TRAIN)
    faults = FaultPlan(config.testing.fault_lane, config.testing.fault_after)
    poison = stages.Poison(config.testing.nan_from, config.testing.nan_count)
    kind = async_pipeline.AsyncPipeline if is_async else sync.SyncPipeline
    self.pipeline = kind(components, placement, self.tracer, train_rng, faults=faults,
                         poison=poison)

    if start == 0:
      if config.rl.warmstart_steps and latest is None and not config.rl.init_from:
        train_state = train_state.replace(params=warmstart.behaviour_clone(
            config, components, placement, train_state.params, rng, self.progress_fn))
      # Iteration 0 is the policy RL starts from (after any warm start), so that the final
      # evaluation against this one is what RL itself added.
      self.result = self._evaluate(0, train_state.params)
    logging.info("set-up and first evaluation took %.1fs", time.perf_counter() - t0)
    self.window = (time.perf_counter(), 0)
    self.tracer.reset_window()
    # The first iteration compiles the rollout and learner programs: a phase of its own on
    # the console, which the first update's callback closes.
    self.compiling = (contextlib.ExitStack() if start < total else None)
    if self.compiling is not None:
      self.compiling.enter_context(console.phase(
          f"compiling the rollout and learner steps ({config.pipeline} pipeline; the first "
          "iteration)", None))
    try:
      train_state, done = self.pipeline.run(train_state, start, total, self._on_update,
                                            self.stop)
    except LaneError as e:
      if isinstance(e.__cause__, BadUpdatesError):  # Raised by the callback, on a lane.
        raise e.__cause__ from None
      raise
    finally:
      self._compiled()
    if done < total:  # Stopped early: SIGTERM or the caller's stop event.
      logging.warning("stopped at iteration %d of %d; saving a checkpoint", done, total)
      if self.last_saved != done:
        self._save(done, train_state)
      self.ckpt.wait()
      return {"step": done, "preempted": True, **self.result}
    if start >= total:
      self.result = self._evaluate(start, train_state.params)
    return {"step": max(start, total), **self.result}

  def _compiled(self) -> None:
    if self.compiling is not None:
      self.compiling.close()
      self.compiling = None

  def _on_update(self, iteration: int, state, metrics: dict) -> None:
    config = self.config
    self._compiled()
    # A refilled GRPO update learns from several rollout slots.
    steps = self.steps_per_iter * int(metrics.get("learner/rollout_slots", 1))
    self.env_steps += steps
    self.window = (self.window[0], self.window[1] + steps)
    skipped = bool(np.asarray(jax.device_get(metrics["learner/skipped"])) > 0)
    if skipped:
      self.skipped_total += 1
      self.skipped_in_a_row += 1
      logging.warning("iteration %d: non-finite loss or gradients; update skipped", iteration)
    else:
      self.skipped_in_a_row = 0
    total = config.train.iterations
    if iteration % config.train.log_every == 0 or iteration == total or skipped:
      self._log(iteration, metrics)
    if self.skipped_in_a_row >= config.train.max_bad_updates:
      raise BadUpdatesError(
          f"{self.skipped_in_a_row} updates in a row had a non-finite loss or gradients "
          f"(up to iteration {iteration}); halting, last good checkpoint: {self.last_saved}")
    if iteration % config.train.eval_every == 0 or iteration == total:
      with self.tracer.span("trainer", "evaluate"):
        self.result = self._evaluate(iteration, state.params)
    # A checkpoint is only written from a good update, so the newest one is always good.
    if not skipped and (iteration % config.train.checkpoint_every == 0 or iteration == total):
      with self.tracer.span("trainer", "checkpoint"):
        self._save(iteration, state)

  def _log(self, iteration: int, metrics: dict) -> None:
    values = metrics_lib.device_get_metrics(metrics)
    values.pop("learner/skipped", None)
    now = time.perf_counter()
    start, steps = self.window
    values.update({
        "sim/env_steps": self.env_steps,
        "sim/env_steps_per_s": steps / max(now - start, 1e-9),
        "learner/version": iteration,
        "learner/skipped_updates": self.skipped_total,
    })
    values.update(self.pipeline.stats())
    if self.tracer.enabled:
      values.update(self.tracer.window())
    self.progress_fn(iteration, values)
    self.window = (now, 0)

  def _evaluate(self, iteration: int, params) -> dict:
    # Across processes: gathered on the learner (every process, at the same iteration),
    # then this process's replica.
    params = parallel.local_replica(self.placement.gather(params))
    params = jax.device_put(params, self.eval_device)
    episodes = self.config.train.eval_episodes
    rounds = evaluation.num_rounds(episodes, self.eval_comp.config.env.num_envs)
    first = "" if self.evaluated else " (the first one compiles)"
    self.evaluated = True
    with console.phase(f"evaluation at iteration {iteration}: {episodes} episodes, sampled "
                       f"and argmax{first}", rounds, "rounds") as bar:
      result = evaluation.evaluate(self.eval_comp, params, self.eval_rng, episodes,
                                   on_round=bar.advance)
    # The same episodes every time, so evaluations are comparable across iterations.
    self.progress_fn(iteration, {**result, "sim/env_steps": self.env_steps})
    return result

  def _save(self, iteration: int, state) -> None:
    self.ckpt.save(iteration, state, state.params,
                   {"env_steps": self.env_steps, "config": self.config, "iteration": iteration})
    self.last_saved = iteration
