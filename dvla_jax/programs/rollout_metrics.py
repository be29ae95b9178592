"""What a rollout slot says about the policy that filled it: the `rollout/` metrics.

`slot_metrics` (success rate and return of the episodes that finished in a slot, per task in
a multi-task run, the spread of policy versions in it) runs on every slot the learner takes;
`combine_slot_metrics` merges those of the several slots a refilled GRPO batch collected.
"""

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dvla_jax import rl
from dvla_jax.programs import steps


def rollout_metrics(rollout: rl.Transition, success: jax.Array, episode_return: jax.Array,
                    first_episodes: bool = False, instruction_tasks: Optional[np.ndarray] = None,
                    task_names: Sequence[str] = ()) -> dict[str, jax.Array]:
  """Success rate and return of the episodes that finished inside a rollout.

  Args:
    rollout: the rollout ([T, B] leaves).
    success: [T, B] 1.0 where the step ended in success.
    episode_return: [T, B] return of the finished episode at `done` steps.
    first_episodes: count each env's first episode of the rollout only (what the learner
      learns from when slots are episodic). Counting the later ones too favours the tasks
      that finish fast, which fit more episodes into a slot.
    instruction_tasks: int [instructions], the task of each row of the env's instruction
      table; with `task_names` (a multi-task run) the episodes are also counted per task, by
      the instruction `obs["instruction"]` they were acting on when they ended.
    task_names: the run's tasks, in the table's numbering.

  Returns:
    Scalar metrics under `rollout/`: "episodes", "success_rate", "episode_return",
    "reward_mean", and per task "<task>/episodes" and "<task>/success_rate".
  """
  done = rollout.done.astype(jnp.float32)
  if first_episodes:
    done = done * steps.first_episode_mask(done)
  finished = jnp.maximum(jnp.sum(done), 1.0)
  metrics = {
      "rollout/episodes": jnp.sum(done),
      "rollout/success_rate": jnp.sum(done * success) / finished,
      "rollout/episode_return": jnp.sum(done * episode_return) / finished,
      "rollout/reward_mean": jnp.mean(rollout.reward),
  }
  if task_names:
    task = jnp.asarray(instruction_tasks, jnp.int32)[rollout.obs["instruction"]]  # [T, B]
    ended = jax.nn.one_hot(task, len(task_names)) * done[..., None]
    episodes = jnp.sum(ended, axis=(0, 1))
    wins = jnp.sum(ended * success[..., None], axis=(0, 1))
    for i, name in enumerate(task_names):
      metrics[f"rollout/{name}/episodes"] = episodes[i]
      metrics[f"rollout/{name}/success_rate"] = wins[i] / jnp.maximum(episodes[i], 1.0)
  return metrics


def _episodes_key(rate_key: str) -> str:
  """The episode count a `rollout/.../success_rate` or `episode_return` is a mean over."""
  return rate_key.rpartition("/")[0] + "/episodes"


def combine_slot_metrics(parts: list[dict[str, jax.Array]]) -> dict[str, jax.Array]:
  """`slot_metrics` of several slots as one: episode-weighted success and return, mean
  reward, and the version range over all of them."""
  out = dict(parts[0])
  for key in parts[0]:
    if key.endswith("/episodes"):
      out[key] = sum(p[key] for p in parts)
  for key in parts[0]:
    if key.endswith(("/success_rate", "/episode_return")):
      count = _episodes_key(key)
      out[key] = sum(p[key] * p[count] for p in parts) / jnp.maximum(out[count], 1.0)
  out["rollout/reward_mean"] = sum(p["rollout/reward_mean"] for p in parts) / len(parts)
  out["rollout/version_min"] = functools.reduce(jnp.minimum,
                                                [p["rollout/version_min"] for p in parts])
  out["rollout/version_max"] = functools.reduce(jnp.maximum,
                                                [p["rollout/version_max"] for p in parts])
  return out


def slot_metrics(slot: steps.RolloutSlot, first_episodes: bool = False,
                 instruction_tasks: Optional[np.ndarray] = None,
                 task_names: Sequence[str] = ()) -> dict[str, jax.Array]:
  """`rollout_metrics` of a full slot, plus the spread of policy versions in it."""
  metrics = rollout_metrics(slot.transition, slot.success, slot.episode_return, first_episodes,
                            instruction_tasks, task_names)
  version = slot.transition.version
  metrics["rollout/version_min"] = jnp.min(version).astype(jnp.float32)
  metrics["rollout/version_max"] = jnp.max(version).astype(jnp.float32)
  return metrics
