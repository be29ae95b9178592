"""The run config's env settings resolve per task (episode length 0: the task's default)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dvla_jax import envs
from dvla_jax.config import config_check
from dvla_jax.config import default_config
from dvla_jax.programs import builders


def _config(task, **rl):
  config = default_config.get_config()
  config.env.task = task
  config.env.num_envs = 4
  config.model.preset = "tiny"
  for k, v in rl.items():
    config.rl[k] = v
  return config


@pytest.mark.parametrize("task", ["touch_cube", "goal_touch_ball", "long_place_two"])
def test_episode_length_zero_takes_the_task_default(task):
  config = _config(task)
  assert config.env.episode_length == 0
  config_check.validate(config)
  resolved = envs.default_config(task, builders.env_config(config))
  assert resolved.episode_length == envs.default_config(
      task, action_horizon=resolved.action_horizon).episode_length
  config.env.episode_length = 7
  assert envs.default_config(task, builders.env_config(config)).episode_length == 7


def test_grpo_rollout_shorter_than_the_task_episode_is_a_config_error():
  config = _config("goal_touch_ball", algo="grpo", group_size=2, rollout_length=4)
  config_check.validate(config)  # The default length is known only to the env.
  with pytest.raises(config_check.ConfigError, match="rollout_length=4 shorter than"):
    builders._make_group(config, 4)  # pylint: disable=protected-access


def test_value_head_steps_at_its_own_learning_rate():
  rl = default_config.get_config().rl
  rl.lr, rl.value_lr = 1e-4, 1e-2
  params = {"value_head": {"kernel": jnp.ones(3)}, "blocks": {"w": jnp.ones(3)}}
  opt = builders.make_optimizer(rl)
  updates, _ = opt.update(jax.tree.map(jnp.ones_like, params), opt.init(params), params)
  # Adam's first step is -lr * sign(grad) for every parameter.
  np.testing.assert_allclose(updates["blocks"]["w"], -1e-4, rtol=1e-3)
  np.testing.assert_allclose(updates["value_head"]["kernel"], -1e-2, rtol=1e-3)
  # Without value_lr the state has the same structure (SFT checkpoints restore into RL runs).
  rl.value_lr = 0.0
  same = builders.make_optimizer(rl).init(params)
  assert jax.tree.structure(same) == jax.tree.structure(opt.init(params))


def test_grpo_groups_share_layouts_but_evaluation_does_not():
  config = _config("goal_touch_ball", algo="grpo", group_size=2, rollout_length=24)
  config.env.image_size = 16
  group = builders._make_group(config, 4)  # pylint: disable=protected-access
  rng = jax.random.key(3)

  def layouts(state):
    return np.asarray(jax.vmap(group.env.object_pos)(state.pipeline_state))

  shared = layouts(group.reset(rng))
  np.testing.assert_allclose(shared[0], shared[1])  # One group: one layout.
  np.testing.assert_allclose(shared[2], shared[3])
  assert not np.allclose(shared[0], shared[2])
  own = layouts(group.reset(rng, shared=False))
  assert all(not np.allclose(own[i], own[j]) for i in range(4) for j in range(i))
