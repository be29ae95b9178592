"""Trainer wiring: build, resume, run the pipeline, evaluate, log and checkpoint.

Library code reports through `progress_fn(step, metrics)`; `main` passes a writer that sends
them to TensorBoard, `metrics.jsonl` and the console.
"""

import os
import time
from typing import Callable, Optional

from absl import logging
import jax
import numpy as np

from dvla_jax.swimlanes import sync
from dvla_jax.training import builders
from dvla_jax.training import checkpoints
from dvla_jax.training import evaluation
from dvla_jax.training import metrics as metrics_lib

# Independent random streams, derived from config.seed.
_INIT, _ENV, _TRAIN, _EVAL = range(4)


def train(config, workdir: str,
          progress_fn: Optional[Callable[[int, dict], None]] = None) -> dict:
  """Trains to `config.train.iterations` iterations, resuming from `workdir` if it has a
  checkpoint.

  Args:
    config: a validated run config (see `default_config.py`).
    workdir: run directory for checkpoints, metrics.jsonl and TensorBoard files.
    progress_fn: called with (iteration, metrics); defaults to a `MetricsWriter` on `workdir`.

  Returns:
    The metrics of the final evaluation (plus the final iteration under "step").
  """
  os.makedirs(workdir, exist_ok=True)
  writer = None
  if progress_fn is None:
    writer = metrics_lib.MetricsWriter(workdir, config.train.iterations)
    progress_fn = writer.write
  ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"),
                                  max_to_keep=config.train.keep_checkpoints)
  try:
    return _train(config, ckpt, progress_fn)
  finally:
    ckpt.close()
    if writer is not None:
      writer.close()


def _train(config, ckpt: checkpoints.Checkpointer, progress_fn) -> dict:
  t0 = time.perf_counter()
  comp = builders.build(config)
  rng = jax.random.key(config.seed)
  train_state = comp.init_train_state(jax.random.fold_in(rng, _INIT))
  env_steps = 0
  latest = ckpt.latest_step()
  if latest is not None:
    train_state, meta = ckpt.restore(latest, train_state)
    env_steps = int(meta.get("env_steps", 0))
    logging.info("resumed from %s at iteration %d", ckpt.directory, latest)
  start = int(train_state.step)
  total = config.train.iterations
  steps_per_iter = config.rl.rollout_length * config.env.num_envs
  eval_rng = jax.random.fold_in(rng, _EVAL)
  env_state = comp.reset(jax.random.fold_in(jax.random.fold_in(rng, _ENV), start))

  def run_eval(iteration):
    # The same episodes every time, so evaluations are comparable across iterations.
    result = evaluation.evaluate(comp, train_state.params, eval_rng, config.train.eval_episodes)
    progress_fn(iteration, {**result, "sim/env_steps": env_steps})
    return result

  def save(iteration):
    ckpt.save(iteration, train_state, train_state.params,
              {"env_steps": env_steps, "config": config, "iteration": iteration})

  result = {}
  if start == 0:
    result = run_eval(0)
  logging.info("set-up and first evaluation took %.1fs", time.perf_counter() - t0)
  window_start, window_steps = time.perf_counter(), 0
  for it in range(start, total):
    train_state, env_state, metrics = sync.iteration(
        comp, train_state, env_state, jax.random.fold_in(jax.random.fold_in(rng, _TRAIN), it))
    env_steps += steps_per_iter
    window_steps += steps_per_iter
    done = it + 1
    if done % config.train.log_every == 0 or done == total:
      metrics = metrics_lib.device_get_metrics(metrics)
      _check_finite(metrics, done)
      now = time.perf_counter()
      metrics.update({"sim/env_steps": env_steps,
                      "sim/env_steps_per_s": window_steps / max(now - window_start, 1e-9),
                      "learner/version": done})
      progress_fn(done, metrics)
      window_start, window_steps = now, 0
    if done % config.train.eval_every == 0 or done == total:
      result = run_eval(done)
    if done % config.train.checkpoint_every == 0 or done == total:
      save(done)
  if start >= total:
    result = run_eval(start)
  return {"step": max(start, total), **result}


def _check_finite(metrics: dict, iteration: int) -> None:
  bad = [k for k, v in metrics.items() if not np.isfinite(v)]
  if bad:
    raise FloatingPointError(f"non-finite metrics at iteration {iteration}: {', '.join(bad)}")
