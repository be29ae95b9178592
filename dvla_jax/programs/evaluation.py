"""Evaluation: success rate and return of the policy on fresh episodes, per task.

Every evaluation plays the same episodes twice: with the policy's tokens sampled at
`model.temperature` (the policy RL trains, reported as `eval/success_rate`) and with the
argmax token per dimension (`eval/greedy_success_rate`). Argmax over 256 free bins picks
single-bin spikes, so the two can differ a lot, and both say something: sampling what the
trained policy does, argmax what its mode does.
"""

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from dvla_jax import envs
from dvla_jax.envs import episodes
from dvla_jax.programs.builders import Components


def evaluate(components: Components, params, rng: jax.Array, num_episodes: int,
             on_round: Optional[Callable[[], None]] = None) -> dict[str, float]:
  """Runs ceil(num_episodes / num_envs) rounds of one episode per env from fresh layouts.

  Only the first episode of each env counts (later ones are auto-resets); it ends at its
  first success or at the episode limit. In a run of several tasks, episode e (env e % B of
  round e // B) runs task e % num_tasks, so the tasks get equal shares (up to one episode).
  The sampled and the argmax policy play the same layouts.

  Args:
    components: the run's components.
    params: policy parameters.
    rng: key for the layouts and sampled actions; the same key gives the same episodes.
    num_episodes: episodes to score (rounded up to a multiple of the batch).
    on_round: called after each round is dispatched (a progress bar's `advance`).

  Returns:
    "eval/success_rate" (sampled actions; with several tasks the mean of the per-task rates),
    "eval/greedy_success_rate" (argmax actions, likewise), "eval/episode_return",
    "eval/episode_length" (sampled), "eval/episodes", and with several tasks
    "eval/<task>/success_rate" and "eval/<task>/greedy_success_rate" for each task.
  """
  names = envs.resolve_tasks(components.config.env.task)
  num_envs = components.config.env.num_envs
  rounds = num_rounds(num_episodes, num_envs)
  sampled, greedy = [], []
  for r in range(rounds):
    round_rng = jax.random.fold_in(rng, r)
    tasks = (r * num_envs + np.arange(num_envs)) % len(names)
    sampled.append(_episode(components, params, round_rng, tasks, greedy=False))
    greedy.append(_episode(components, params, round_rng, tasks, greedy=True))
    if on_round is not None:
      on_round()
  sampled, greedy = (jax.tree.map(lambda *x: np.concatenate(x), *jax.device_get(runs))
                     for runs in (sampled, greedy))
  task = np.arange(rounds * num_envs) % len(names)
  rates = {"success_rate": [], "greedy_success_rate": []}
  out = {}
  for i, name in enumerate(names):
    for key, (success, _, _) in zip(rates, (sampled, greedy), strict=True):
      rate = float(success[task == i].mean())
      rates[key].append(rate)
      if len(names) > 1:
        out[f"eval/{name}/{key}"] = rate
  success, ret, length = sampled
  return {
      "eval/success_rate": float(np.mean(rates["success_rate"])),
      "eval/greedy_success_rate": float(np.mean(rates["greedy_success_rate"])),
      "eval/episode_return": float(ret.mean()),
      "eval/episode_length": float(length.mean()),
      "eval/episodes": int(success.size),
      **out,
  }


def num_rounds(num_episodes: int, num_envs: int) -> int:
  """Rounds of `num_envs` episodes that `evaluate` plays for `num_episodes`."""
  return max(1, math.ceil(num_episodes / num_envs))


def _episode(components: Components, params, rng, tasks: np.ndarray, greedy: bool):
  """(success, return, length), float [B] each, of one episode per env."""
  reset_rng, act_rng = jax.random.split(rng)

  def step(state, t):
    if greedy:
      out = components.act_greedy(params, state.obs)
    else:
      out = components.act(params, state.obs, jax.random.fold_in(act_rng, t))
    return components.env_step(state, out.actions)

  # Every world its own layout, whatever the algorithm (GRPO's rollouts share them in groups).
  state = components.reset(reset_rng, jnp.asarray(tasks, jnp.int32), shared=False)
  _, totals = episodes.play(state, step, components.env.config.episode_length)
  return totals.success, totals.ret, totals.length
