"""GRPO runs in both pipelines: the sync loop and the four async lanes, through the trainer;
dynamic sampling refills a batch with the mixed groups of more slots."""

import os
import sys

import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "configs"))
import demo  # noqa: E402  (a config file, imported by path)

from dvla_jax import rl  # noqa: E402
from dvla_jax.programs import builders  # noqa: E402
from dvla_jax.programs import steps  # noqa: E402
from dvla_jax.training import trainer  # noqa: E402


def _slot(outcomes, tag):
  """A one-step slot of len(outcomes) envs whose first episode ended with these successes;
  every leaf of env e holds tag * 100 + e, so gathered envs can be told apart."""
  b = len(outcomes)
  ids = tag * 100.0 + np.arange(b, dtype=np.float32)
  tb = (1, b)
  transition = rl.Transition(
      obs={"proprio": jnp.asarray(ids)[None, :, None]}, tokens=jnp.zeros(tb + (1, 1), jnp.int32),
      log_probs=jnp.zeros(tb + (1, 1)), value=jnp.asarray(ids)[None],
      reward=jnp.asarray(outcomes, jnp.float32)[None], done=jnp.ones(tb, bool),
      truncated=jnp.zeros(tb, bool), version=jnp.zeros(tb, jnp.int32))
  slot = steps.RolloutSlot(transition=transition, success=jnp.zeros(tb),
                           episode_return=jnp.zeros(tb))
  return slot, jnp.asarray(ids)


def test_refill_fills_free_group_positions_with_mixed_groups():
  # Groups of 2: slot A has groups (1,1) uniform, (0,1) mixed, (0,0) uniform, (1,0) mixed.
  a, a_boot = _slot([1, 1, 0, 1, 0, 0, 1, 0], tag=1)
  batch, boot, valid = steps.grpo_compact(a, a_boot, group_size=2, reward_scale=1.0)
  env_ids = np.asarray(batch.transition.value[0])
  np.testing.assert_array_equal(np.asarray(valid), [1, 1, 0, 0])
  np.testing.assert_array_equal(env_ids[:4], [102, 103, 106, 107])  # Mixed groups, in order.
  np.testing.assert_array_equal(np.asarray(boot)[:4], [102, 103, 106, 107])
  # PoolSlot B: only its group 2, (1,0), is mixed: it fills position 2; position 3 stays free.
  b, b_boot = _slot([0, 0, 1, 1, 1, 0, 0, 0], tag=2)
  batch, boot, valid = steps.grpo_merge(batch, boot, valid, b, b_boot, group_size=2,
                                        reward_scale=1.0)
  np.testing.assert_array_equal(np.asarray(valid), [1, 1, 1, 0])
  env_ids = np.asarray(batch.transition.value[0])
  np.testing.assert_array_equal(env_ids[:6], [102, 103, 106, 107, 204, 205])
  np.testing.assert_array_equal(np.asarray(batch.transition.obs["proprio"])[0, 4:6, 0],
                                [204, 205])
  np.testing.assert_array_equal(np.asarray(batch.transition.reward[0])[4:6], [1, 0])
  # The update's weights: the free position's group is out of every mean.
  _, weight, _, kept = steps._grpo_advantages(  # pylint: disable=protected-access
      batch.transition, batch.transition.reward, 2, valid)
  np.testing.assert_array_equal(np.asarray(weight[0]), [1, 1, 1, 1, 1, 1, 0, 0])
  assert float(kept) == 0.75
  # A full batch takes nothing more.
  full = jnp.ones(4)
  same, _, valid = steps.grpo_merge(batch, boot, full, b, b_boot, group_size=2,
                                    reward_scale=1.0)
  np.testing.assert_array_equal(np.asarray(same.transition.value), np.asarray(
      batch.transition.value))
  np.testing.assert_array_equal(np.asarray(valid), [1, 1, 1, 1])


@pytest.mark.parametrize("pipeline, refill", [("sync", 0), ("async", 0), ("sync", 2),
                                              ("async", 2)])
def test_grpo_trains_in_each_pipeline(tmp_path, pipeline, refill):
  config = demo.get_config("tiny")
  config.rl.grpo_refill_slots = refill
  config.pipeline = pipeline
  config.swimlanes.env_groups = 2 if pipeline == "async" else 1
  config.rl.algo = "grpo"
  config.rl.group_size = 2
  config.rl.num_minibatches = 1
  config.rl.rollout_length = config.env.episode_length  # Every env finishes its episode.
  config.train.iterations = 3
  config.train.eval_every = 3
  config.swimlanes.trace = False
  rows = []
  components = builders.build(config)
  result = trainer.train(config, str(tmp_path), progress_fn=lambda s, m: rows.append((s, m)),
                         components=components)
  learner = [m for _, m in rows if "learner/groups_kept" in m]
  assert result["step"] == 3 and len(learner) == 3
  assert all(0.0 <= m["learner/groups_kept"] <= 1.0 for m in learner)
  assert all("learner/value_loss" not in m for m in learner)  # No critic.
  assert all(m["learner/skipped_updates"] == 0 for m in learner)
  slots = [m["learner/rollout_slots"] for m in learner]
  assert all(1 <= n <= 1 + refill for n in slots)
  # Env steps count every slot an update learnt from.
  per_slot = config.rl.rollout_length * config.env.num_envs // config.swimlanes.env_groups
  assert learner[-1]["sim/env_steps"] == per_slot * sum(slots)
  if refill:
    # The tiny policy rarely succeeds, so most groups agree and refills happen.
    assert max(slots) > 1
