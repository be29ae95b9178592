"""The run config's env settings resolve per task (episode length 0: the task's default)."""

import pytest

from dvla_jax import envs
from dvla_jax.training import builders
from dvla_jax.training import config_check
from dvla_jax.training import default_config


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
