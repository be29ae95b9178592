"""What a rollout slot says about the policy that filled it: the `rollout/` metrics.

`slot_metrics` (success rate and return of the episodes that finished in a slot, the spread
of policy versions in it) runs on every slot the learner takes; `combine_slot_metrics` merges
those of the several slots a refilled GRPO batch collected.
"""

import functools

import jax
import jax.numpy as jnp

from dvla_jax import rl
from dvla_jax.programs import steps


def rollout_metrics(rollout: rl.Transition, success: jax.Array, episode_return: jax.Array,
                    first_episodes: bool = False) -> dict[str, jax.Array]:
  """Success rate and return of the episodes that finished inside a rollout.

  Args:
    rollout: the rollout ([T, B] leaves).
    success: [T, B] 1.0 where the step ended in success.
    episode_return: [T, B] return of the finished episode at `done` steps.
    first_episodes: count each env's first episode of the rollout only (what the learner
      learns from when slots are episodic). Counting the later ones too favours the tasks
      that finish fast, which fit more episodes into a slot.

  Returns:
    Scalar metrics under `rollout/`.
  """
  done = rollout.done.astype(jnp.float32)
  if first_episodes:
    done = done * steps.first_episode_mask(done)
  finished = jnp.maximum(jnp.sum(done), 1.0)
  return {
      "rollout/episodes": jnp.sum(done),
      "rollout/success_rate": jnp.sum(done * success) / finished,
      "rollout/episode_return": jnp.sum(done * episode_return) / finished,
      "rollout/reward_mean": jnp.mean(rollout.reward),
  }


def combine_slot_metrics(parts: list[dict[str, jax.Array]]) -> dict[str, jax.Array]:
  """`slot_metrics` of several slots as one: episode-weighted success and return, mean
  reward, and the version range over all of them."""
  episodes = sum(p["rollout/episodes"] for p in parts)
  weight = jnp.maximum(episodes, 1.0)
  out = dict(parts[0])
  out["rollout/episodes"] = episodes
  for key in ("rollout/success_rate", "rollout/episode_return"):
    out[key] = sum(p[key] * p["rollout/episodes"] for p in parts) / weight
  out["rollout/reward_mean"] = sum(p["rollout/reward_mean"] for p in parts) / len(parts)
  out["rollout/version_min"] = functools.reduce(jnp.minimum,
                                                [p["rollout/version_min"] for p in parts])
  out["rollout/version_max"] = functools.reduce(jnp.maximum,
                                                [p["rollout/version_max"] for p in parts])
  return out


def slot_metrics(slot: steps.RolloutSlot, first_episodes: bool = False) -> dict[str, jax.Array]:
  """`rollout_metrics` of a full slot, plus the spread of policy versions in it."""
  metrics = rollout_metrics(slot.transition, slot.success, slot.episode_return, first_episodes)
  version = slot.transition.version
  metrics["rollout/version_min"] = jnp.min(version).astype(jnp.float32)
  metrics["rollout/version_max"] = jnp.max(version).astype(jnp.float32)
  return metrics
