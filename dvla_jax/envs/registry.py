"""Task registry: names -> constructors, plus the standard training wrappers."""

import difflib
from typing import Callable

from brax.envs.wrappers import training as brax_wrappers
import jax
import jax.numpy as jnp

from dvla_jax.envs import mjx_env
from dvla_jax.envs import touch

_TASKS: dict[str, tuple[Callable[[mjx_env.EnvConfig], mjx_env.TabletopEnv], str]] = {
    "touch_cube": (touch.TouchCube, "touch the red/green/blue cube named in the instruction"),
}


class UnknownTaskError(KeyError):
  """An unknown task name; the message lists the closest registered names."""

  def __str__(self):
    return self.args[0]


def list_tasks() -> list[str]:
  """Registered task names, sorted."""
  return sorted(_TASKS)


def describe(name: str) -> str:
  return _TASKS[name][1]


def check_task(name: str) -> None:
  """Raises UnknownTaskError (one line naming the closest tasks) if `name` is not registered."""
  if name not in _TASKS:
    close = difflib.get_close_matches(name, _TASKS, n=3, cutoff=0.3) or list_tasks()[:3]
    raise UnknownTaskError(f"unknown task {name!r}; closest: {', '.join(close)}")


def make(name: str, config: mjx_env.EnvConfig) -> mjx_env.TabletopEnv:
  """Builds the single-world env `name` (see `wrap_for_training` for the batched one)."""
  check_task(name)
  return _TASKS[name][0](config)


class AutoResetWrapper(brax_wrappers.AutoResetWrapper):
  """brax's AutoResetWrapper that also restarts the per-episode task info (`info["task"]`).

  brax restores the physics state and observation of a finished episode but keeps its `info`;
  the task's target and instruction live in `info["task"]` and must restart with the layout.
  """

  def reset(self, rng):
    state = super().reset(rng)
    state.info["first_task"] = state.info["task"]
    return state

  def step(self, state, action):
    state = super().step(state, action)
    done = state.done.astype(bool)

    def where_done(first, current):
      return jnp.where(jnp.reshape(done, done.shape + (1,) * (current.ndim - done.ndim)),
                       first, current)

    state.info["task"] = jax.tree.map(where_done, state.info["first_task"], state.info["task"])
    return state


def wrap_for_training(env: mjx_env.TabletopEnv):
  """Vmaps `env` over `env.config.num_worlds` worlds with brax's training wrappers.

  VmapWrapper batches, EpisodeWrapper adds the time limit (`info["truncation"]`) and episode
  metrics, AutoResetWrapper restarts finished episodes from the reset state kept in
  `info["first_pipeline_state"]` (refresh it with `refresh_reset_states` for new layouts).
  """
  env = brax_wrappers.VmapWrapper(env)
  env = brax_wrappers.EpisodeWrapper(env, env.config.episode_length, action_repeat=1)
  return AutoResetWrapper(env)


def refresh_reset_states(state, fresh):
  """Makes finished episodes restart from the layouts of `fresh` (a new batched reset).

  brax's AutoResetWrapper restarts every episode from the env's first reset state, so without
  this each env would replay one layout forever.
  """
  info = dict(state.info)
  info["first_pipeline_state"] = fresh.pipeline_state
  info["first_obs"] = fresh.obs
  info["first_task"] = fresh.info["task"]
  return state.replace(info=info)
