"""Task specs: one task, a suite or a list of suite tasks, resolved and built as one env."""

import pytest

from dvla_jax import envs
from dvla_jax.config import config_check
from dvla_jax.config import default_config
from dvla_jax.envs import tasks


def test_specs_resolve_in_order():
  assert envs.resolve_tasks("touch_cube") == ["touch_cube"]
  assert envs.resolve_tasks("goal_push_cube") == ["goal_push_cube"]
  assert envs.resolve_tasks("suite:goal") == tasks.suite_tasks("goal")
  assert envs.resolve_tasks("goal_place_cube, spatial_left_cube") == [
      "goal_place_cube", "spatial_left_cube"]


@pytest.mark.parametrize("spec, error, message", [
    ("suite:goals", envs.UnknownTaskError,
     "unknown suite in 'suite:goals'; allowed: suite:spatial, suite:object, suite:goal"),
    ("goal_push_cub", envs.UnknownTaskError, "closest: goal_push_cube"),
    ("goal_push_cube,goal_push_cub", envs.UnknownTaskError, "closest: goal_push_cube"),
    ("goal_push_cube,touch_cube", ValueError, "'touch_cube' in the task list"),
    ("goal_push_cube,goal_push_cube", ValueError, "repeats a task"),
    ("goal_push_cube,", ValueError, "empty entry"),
])
def test_bad_specs_fail_in_one_line(spec, error, message):
  with pytest.raises(error) as err:
    envs.resolve_tasks(spec)
  assert message in str(err.value) and "\n" not in str(err.value)


def test_a_suite_spec_builds_one_env_with_the_longest_episode():
  names = ["goal_touch_ball", "goal_stack_cubes"]
  env = envs.make(",".join(names), envs.EnvConfig(num_worlds=1, render=False))
  assert isinstance(env, envs.SuiteEnv) and env.task_names == names
  limits = [envs.default_config(n, action_horizon=env.config.action_horizon).episode_length
            for n in names]
  assert limits[0] < limits[1] == env.config.episode_length


def _config(task: str):
  config = default_config.get_config()
  config.env.task = task
  return config


@pytest.mark.parametrize("task", ["touch_cube", "suite:long", "goal_push_cube,object_place_ball"])
def test_config_check_accepts_specs(task):
  config_check.validate(_config(task), known_tasks=config_check.registered_tasks)


@pytest.mark.parametrize("task, message", [
    ("touch_cub", "env.task='touch_cub' unknown; allowed: goal_lift_cylinder"),
    ("suite:longest", "env.task='suite:longest': unknown suite; allowed: suite:goal, "),
    ("goal_push_cube,goal_push", "unknown task 'goal_push'; allowed: suite tasks separated"),
    ("goal_push_cube,touch_cube", "'touch_cube' is not a suite task"),
    ("goal_push_cube,goal_push_cube", "repeats a task"),
])
def test_config_check_reports_a_bad_spec_in_one_line(task, message):
  with pytest.raises(config_check.ConfigError) as err:
    config_check.validate(_config(task), known_tasks=config_check.registered_tasks)
  assert message in str(err.value) and "\n" not in str(err.value)
  # The registry rejects the same specs.
  with pytest.raises((envs.UnknownTaskError, ValueError)):
    envs.resolve_tasks(task)
