"""Evaluation: success rate and return of the policy on fresh episodes."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from dvla_jax.training.builders import Components


def evaluate(comp: Components, params, rng: jax.Array, num_episodes: int) -> dict[str, float]:
  """Runs ceil(num_episodes / num_envs) rounds of one episode per env from fresh layouts.

  Only the first episode of each env counts (later ones are auto-resets). The policy samples
  its tokens at `model.temperature`, or takes the argmax when `train.eval_greedy` is set.

  Args:
    comp: the run's components.
    params: policy parameters.
    rng: key for the layouts; the same key gives the same episodes.
    num_episodes: episodes to score (rounded up to a multiple of the batch).

  Returns:
    {"eval/success_rate", "eval/episode_return", "eval/episode_length", "eval/episodes"}.
  """
  num_envs = comp.config.env.num_envs
  rounds = max(1, math.ceil(num_episodes / num_envs))
  success, ret, length = [], [], []
  for r in range(rounds):
    s, g, n = _episode(comp, params, jax.random.fold_in(rng, r))
    success.append(s)
    ret.append(g)
    length.append(n)
  success, ret, length = (np.concatenate(jax.device_get(x)) for x in (success, ret, length))
  return {
      "eval/success_rate": float(success.mean()),
      "eval/episode_return": float(ret.mean()),
      "eval/episode_length": float(length.mean()),
      "eval/episodes": int(success.size),
  }


def _episode(comp: Components, params, rng):
  reset_rng, act_rng = jax.random.split(rng)
  state = comp.reset(reset_rng)
  active = jnp.ones((comp.config.env.num_envs,), jnp.float32)
  success = jnp.zeros_like(active)
  ret = jnp.zeros_like(active)
  length = jnp.zeros_like(active)
  for t in range(comp.env.config.episode_length):
    if comp.config.train.eval_greedy:
      out = comp.act_greedy(params, state.obs)
    else:
      out = comp.act(params, state.obs, jax.random.fold_in(act_rng, t))
    state = comp.env_step(state, out.actions)
    success, ret, length, active = _accumulate(
        success, ret, length, active, state.metrics["success"], state.reward, state.done)
  return success, ret, length


@jax.jit
def _accumulate(success, ret, length, active, step_success, reward, done):
  success = success + active * step_success
  ret = ret + active * reward
  length = length + active
  return success, ret, length, active * (1.0 - done)
