"""How often the scripted experts succeed: `evaluate_expert(task)` and `expert_table()`.

The benchmark, the demonstration writer and `python -m dvla_jax.envs --experts` call them.
"""

import math
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dvla_jax.envs import episodes
from dvla_jax.envs import mjx_env
from dvla_jax.envs import registry
from dvla_jax.envs import suite
from dvla_jax.envs import tasks


def rollout(env, reset_fn, rng: jax.Array, max_steps: int | None = None):
  """Runs the expert on every world until each succeeds once (its state then freezes).

  The loop and the episode rule are `episodes.play`'s: an episode ends at its first done.

  Args:
    env: a single-world env with `expert_action`.
    reset_fn: jitted `(rng) -> batched State`.
    rng: PRNG key.
    max_steps: policy steps (default: the env's episode length).

  Returns:
    (final batched State, success [B] bool, steps to success [B] int, -1 if never).
  """
  step = _jitted_expert_step(env)
  state = reset_fn(rng)
  frozen = [jnp.zeros(state.reward.shape, bool)]

  def expert_step(state, t):
    del t
    nxt, now = step(state, frozen[0])
    frozen[0] = frozen[0] | now
    return nxt

  state, totals = episodes.play(state, expert_step, max_steps or env.config.episode_length)
  success = np.asarray(totals.success) > 0
  return state, success, np.where(success, np.asarray(totals.length).astype(int), -1)


def _jitted_expert_step(env):
  cached = getattr(env, "_expert_step", None)
  if cached is not None:
    return cached

  @jax.jit
  def step(state, frozen):
    nxt = jax.vmap(env.step)(state, jax.vmap(env.expert_action)(state))

    def keep(old, new):
      # MJX Warp also carries buffers shared by all worlds (e.g. contacts); those are
      # recomputed every step, so only per-world leaves need freezing.
      if new.ndim == 0 or new.shape[0] != frozen.shape[0] or old.shape != new.shape:
        return new
      mask = jnp.reshape(frozen, frozen.shape + (1,) * (new.ndim - 1))
      return jnp.where(mask, old, new)
    return jax.tree.map(keep, state, nxt), nxt.metrics["success"] > 0

  env._expert_step = step  # pylint: disable=protected-access
  return step


def evaluate_expert(task: str, num_worlds: int = 16, episodes: int = 32,
                    seed: int = 0) -> dict[str, Any]:
  """Runs the scripted expert of `task` for `episodes` episodes (no rendering).

  Args:
    task: a registered task name.
    num_worlds: episodes run in parallel.
    episodes: episodes in total (rounded up to a multiple of num_worlds).
    seed: PRNG seed.

  Returns:
    {"task", "episodes", "success_rate", "mean_steps" (to success, over successes),
     "episode_length", "seconds"}.
  """
  config = registry.default_config(task, num_worlds=num_worlds, render=False)
  return expert_table([task], config, episodes, seed)[task]


def expert_table(task_names: Sequence[str] | None = None,
                 config: mjx_env.EnvConfig | None = None, episodes: int = 32,
                 seed: int = 0) -> dict[str, dict[str, Any]]:
  """Expert success per task; suite tasks share one compiled env (worlds split among them).

  Args:
    task_names: registered tasks (default: all).
    config: env settings; `num_worlds` is the total batch (default: 8 worlds per task, no
      rendering).
    episodes: episodes per task (rounded up to whole batches).
    seed: PRNG seed.

  Returns:
    {task: {"task", "episodes", "success_rate", "mean_steps", "episode_length", "seconds"}}.
  """
  names = list(task_names or registry.list_tasks())
  in_suite = [n for n in names if n in tasks.BY_NAME]
  table = {}
  for other in (n for n in names if n not in tasks.BY_NAME):
    registry.check_task(other)
    cfg = registry.default_config(other, **_batch_fields(config, 8))
    env = registry.make(other, cfg)
    table.update(_run(env, jax.jit(lambda r, e=env: jax.vmap(e.reset)(
        jax.random.split(r, e.config.num_worlds))), [other], np.zeros(cfg.num_worlds, int),
        episodes, seed))
  if in_suite:
    cfg = suite.SuiteEnv.default_config(
        config, task_names=in_suite, **_batch_fields(config, 8 * len(in_suite)))
    env = suite.SuiteEnv(cfg, in_suite)
    ids = np.arange(cfg.num_worlds) % len(in_suite)
    reset = jax.jit(lambda r: jax.vmap(env.reset_task)(
        jax.random.split(r, cfg.num_worlds), jnp.asarray(ids)))
    table.update(_run(env, reset, in_suite, ids, episodes, seed))
  return {n: table[n] for n in names}


def _batch_fields(config, default_worlds):
  if config is None:
    return {"num_worlds": default_worlds, "render": False}
  return {}


def _run(env, reset, names, ids, episodes, seed):
  per_round = np.bincount(ids, minlength=len(names))
  rounds = max(math.ceil(episodes / max(per_round.min(), 1)), 1)
  wins = np.zeros(len(names))
  steps = [[] for _ in names]
  start = time.perf_counter()
  for r in range(rounds):
    _, success, to_success = rollout(env, reset, jax.random.fold_in(jax.random.PRNGKey(seed), r))
    for i in range(len(names)):
      wins[i] += success[ids == i].sum()
      steps[i] += list(to_success[(ids == i) & success])
  seconds = time.perf_counter() - start
  return {n: {"task": n, "episodes": int(rounds * per_round[i]),
              "success_rate": float(wins[i] / (rounds * per_round[i])),
              "mean_steps": float(np.mean(steps[i])) if steps[i] else float("nan"),
              "episode_length": env.config.episode_length, "seconds": seconds}
          for i, n in enumerate(names)}
