"""Users' own tasks: `envs.register_task`, `envs.import_tasks` and `examples/custom_task.py`."""

import pathlib
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dvla_jax import envs
from dvla_jax.envs import custom
from dvla_jax.envs import registry

_ROOT = pathlib.Path(__file__).resolve().parents[2]
_EXAMPLE = str(_ROOT / "examples" / "custom_task.py")


@pytest.fixture(autouse=True)
def _restore_registry():
  """Each test registers into a copy of the registry that is thrown away afterwards."""
  saved = dict(registry._TASKS)  # pylint: disable=protected-access
  yield
  registry._TASKS.clear()  # pylint: disable=protected-access
  registry._TASKS.update(saved)  # pylint: disable=protected-access


def _layout(rng):
  del rng
  qpos = jnp.array([[0.1, 0.0, 0.03, 1.0, 0.0, 0.0, 0.0]])
  return qpos, {"instruction": jnp.zeros((), jnp.int32)}


def _near(env, data, info):
  del info
  distance = jnp.linalg.norm(env.tcp_pos(data) - env.object_pos(data)[0])
  return distance < 0.06, distance


def _definition(**changes):
  fields = dict(name="test_touch_one", objects=(envs.ObjectSpec("one", "red"),),
                instructions=("touch the red cube",), sample_episode=_layout, success=_near)
  fields.update(changes)
  return envs.TaskDefinition(**fields)


def test_registered_task_is_listed_with_its_suite_and_description():
  envs.register_task(_definition(suite="mine", description="a test task"))
  assert "test_touch_one" in envs.list_tasks()
  assert envs.task_suite("test_touch_one") == "mine"
  assert envs.describe("test_touch_one") == "a test task"
  assert envs.resolve_tasks("test_touch_one") == ["test_touch_one"]
  assert not envs.has_expert("test_touch_one")
  assert envs.has_expert("touch_cube")


@pytest.mark.parametrize("changes, fragment", [
    ({"name": "touch_cube"}, "'touch_cube' is already registered"),
    ({"success": None}, "has no success predicate"),
    ({"sample_episode": None}, "has no sample_episode"),
    ({"instructions": ()}, "has no instructions"),
    ({"episode_length": 0}, "episode_length=0"),
    ({"name": "a,b"}, "task name 'a,b'"),
    ({"mjcf": "<mujoco><worldbody><geom type='nope'/></worldbody></mujoco>"},
     "the scene does not compile"),
    ({"mjcf": "<mujoco><worldbody><geom size='0.1'/></worldbody></mujoco>"},
     "the scene lacks body 'gripper'"),
    ({"mjcf": "no/such/scene.xml"}, "neither MJCF text nor a file"),
])
def test_bad_definitions_fail_with_one_line(changes, fragment):
  with pytest.raises(envs.TaskDefinitionError) as error:
    envs.register_task(_definition(**changes))
  assert fragment in str(error.value)
  assert "\n" not in str(error.value)


def test_registering_a_name_twice_fails():
  envs.register_task(_definition())
  with pytest.raises(envs.TaskDefinitionError, match="already registered"):
    envs.register_task(_definition())


def test_import_tasks_errors_are_one_line(tmp_path):
  with pytest.raises(envs.ImportTasksError, match="no such file"):
    envs.import_tasks(str(tmp_path / "missing.py"))
  with pytest.raises(envs.ImportTasksError, match="no module named 'no_such_task_module'"):
    envs.import_tasks("no_such_task_module")
  raising = tmp_path / "raising.py"
  raising.write_text("raise RuntimeError('boom')\n")
  with pytest.raises(envs.ImportTasksError) as error:
    envs.import_tasks(str(raising))
  assert "raised RuntimeError: boom" in str(error.value)
  assert "\n" not in str(error.value)


def test_import_tasks_imports_a_file_once(tmp_path):
  module = tmp_path / "my_tasks.py"
  module.write_text(textwrap.dedent("""
      import jax.numpy as jnp
      from dvla_jax import envs

      def layout(rng):
        qpos = jnp.array([[0.1, 0.0, 0.03, 1.0, 0.0, 0.0, 0.0]])
        return qpos, {"instruction": jnp.zeros((), jnp.int32)}

      def near(env, data, info):
        distance = jnp.linalg.norm(env.tcp_pos(data) - env.object_pos(data)[0])
        return distance < 0.06, distance

      envs.register_task(envs.TaskDefinition(
          name="test_from_file", objects=(envs.ObjectSpec("one", "red"),),
          instructions=("touch the red cube",), sample_episode=layout, success=near))
  """))
  envs.import_tasks(f"{module},{module}")  # Twice in one spec, and again below.
  envs.import_tasks(str(module))
  assert "test_from_file" in envs.list_tasks()
  assert custom.absolute_spec(f" {module.name} ,os.path") == (
      f"{pathlib.Path(module.name).resolve()},os.path")


def test_example_task_runs_its_expert_to_success():
  """The example module registers a task whose scripted expert succeeds in its own env."""
  envs.import_tasks(_EXAMPLE)
  assert "hover_over_ball" in envs.list_tasks()
  assert envs.task_suite("hover_over_ball") == "examples"
  env = envs.make("hover_over_ball", envs.EnvConfig(num_worlds=4))
  assert env.config.episode_length == 8
  batched = envs.wrap_for_training(env)
  reset, step = jax.jit(batched.reset), jax.jit(batched.step)
  state = reset(jax.random.split(jax.random.PRNGKey(0), 4))
  expert = jax.jit(jax.vmap(env.expert_action))
  succeeded = np.zeros(4, bool)
  for _ in range(4):
    state = step(state, expert(state))
    succeeded |= np.asarray(state.metrics["success"]) > 0
  assert succeeded.all()
  # The reward is the success-first one: 1 on the step that succeeds.
  assert set(np.unique(np.asarray(state.reward))) <= {0.0, 1.0}
