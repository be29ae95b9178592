"""Users' own tasks: declare a task in a module of your own, register it, and train on it.

    from dvla_jax import envs

    envs.register_task(envs.TaskDefinition(
        name="touch_ball",
        objects=(envs.ObjectSpec("ball", "yellow", shape="sphere"),),
        instructions=("touch the yellow ball",),
        sample_episode=my_layout,      # rng -> (object qpos [num_objects, 7], info)
        success=my_success,            # (env, data, info) -> (success bool, distance metres)
        expert=my_expert,              # optional: (env, state) -> action chunk [H * 3]
        episode_length=8))

A run imports such modules with `--config.env.import_tasks=path/to/my_tasks.py` (files or
module names, comma-separated); `python -m dvla_jax.envs --import_tasks=...` takes the same.
A registered task then works wherever a built-in one does: `--list`, `--video`, SFT (with an
expert), RL and `dvla_jax.evaluate`. `examples/custom_task.py` is a complete example.

The reward is the success-first reward of every task (`mjx_env.TabletopEnv.step`): 1 on the
step that succeeds, which ends the episode, else 0; `env.reward_shaping` adds potential-based
shaping on the distance `success` returns, which can never outweigh success.
"""

import dataclasses
import importlib
import importlib.util
import os
import sys
from typing import Any, Callable, Optional, Sequence

import jax
import mujoco

from dvla_jax.envs import mjx_env
from dvla_jax.envs import scene

# The names a scene of your own (`TaskDefinition.mjcf`) must define, as the shared one does.
REQUIRED_MJCF_NAMES = ("body 'gripper'", "site 'tcp'", "keyframe 'home'",
                       "a free joint '<object>_free' per object", "3 actuators (gripper x, y, z)")


class TaskDefinitionError(ValueError):
  """A task definition that cannot be registered (one line saying why)."""


@dataclasses.dataclass(frozen=True)
class TaskDefinition:
  """Everything a task is, for `register_task`.

  Attributes:
    name: the registry name (`env.task`), unique.
    instructions: every instruction the task can issue; the `info["instruction"]` that
      `sample_episode` returns indexes this tuple.
    sample_episode: rng -> (object qpos float [num_objects, 7] (position and quaternion of
      each object), info dict of arrays holding at least "instruction" (int32 scalar)). Runs
      under jit, once per world and episode.
    success: (env, data, info) -> (success bool scalar, distance-to-goal float scalar in
      metres). `env` is the `TabletopEnv` (`env.object_pos(data)`, `env.tcp_pos(data)`),
      `data` the MJX state, `info` what `sample_episode` returned. The success predicate
      decides the reward (see the module docstring); the distance feeds optional shaping and
      the `distance` metric.
    objects: the free objects, placed in the shared tabletop scene (palm gripper, table,
      front/top/wrist cameras), or listed in your own `mjcf` scene by name.
    mjcf: a scene of your own, MJCF text or a path to an .xml file ("" = the shared scene
      with `objects`). It must define the names in `REQUIRED_MJCF_NAMES`.
    expert: optional scripted expert, (env, state) -> action chunk float [H * 3] in [-1, 1]
      (gripper target deltas, H = `env.config.action_horizon`), with privileged state; it
      enables SFT and the RL warm start.
    episode_length: the task's default policy steps per episode (`env.episode_length=0`).
    suite: an optional suite name, shown by `--list`.
    description: one line for `--list`.
  """

  name: str
  instructions: Sequence[str]
  sample_episode: Callable[[jax.Array], tuple[jax.Array, dict[str, jax.Array]]]
  success: Callable[[Any, Any, dict], tuple[jax.Array, jax.Array]]
  objects: Sequence[scene.ObjectSpec] = ()
  mjcf: str = ""
  expert: Optional[Callable[[Any, mjx_env.State], jax.Array]] = None
  episode_length: int = 16
  suite: str = ""
  description: str = ""


class DefinedTask(mjx_env.TabletopEnv):
  """The env of a `TaskDefinition` (`register_task` makes one subclass per definition)."""

  definition: TaskDefinition

  def instruction_table(self) -> list[str]:
    return list(self.definition.instructions)

  def _scene_xml(self, config: mjx_env.EnvConfig) -> str:
    return scene_xml(self.definition, config)

  def _sample_episode(self, rng):
    return self.definition.sample_episode(rng)

  def _evaluate(self, data, info):
    success, distance = self.definition.success(self, data, info)
    return success, distance, {}

  def expert_action(self, state):
    if self.definition.expert is None:
      raise NotImplementedError(f"task {self.definition.name!r} has no scripted expert")
    return self.definition.expert(self, state)


def has_expert(env_class: type) -> bool:
  """Whether a task class has a scripted expert (every built-in task does)."""
  if issubclass(env_class, DefinedTask):
    return env_class.definition.expert is not None
  return True


def scene_xml(definition: TaskDefinition, config: mjx_env.EnvConfig) -> str:
  """The MJCF text of a definition's scene."""
  if not definition.mjcf:
    return scene.tabletop_xml(list(definition.objects), config.image_size, config.timestep)
  if definition.mjcf.lstrip().startswith("<"):
    return definition.mjcf
  with open(definition.mjcf, encoding="utf-8") as f:
    return f.read()


def make_class(definition: TaskDefinition) -> type[DefinedTask]:
  """Checks `definition` and returns its env class.

  Raises:
    TaskDefinitionError: one line: a missing success predicate, sampler or instruction, a
      bad episode length, or a scene that does not compile or lacks a required name.
  """
  d = definition
  where = f"task {d.name!r}"
  if not isinstance(d.name, str) or not d.name or "," in d.name or ":" in d.name:
    raise TaskDefinitionError(f"task name {d.name!r}; allowed: a non-empty name without ',' "
                              "or ':'")
  if not callable(d.success):
    raise TaskDefinitionError(f"{where} has no success predicate; allowed: success=(env, "
                              "data, info) -> (success, distance)")
  if not callable(d.sample_episode):
    raise TaskDefinitionError(f"{where} has no sample_episode; allowed: rng -> (object qpos "
                              "[num_objects, 7], info)")
  if d.expert is not None and not callable(d.expert):
    raise TaskDefinitionError(f"{where}: expert is not callable; allowed: None or (env, "
                              "state) -> action chunk")
  if not d.instructions or not all(isinstance(t, str) and t for t in d.instructions):
    raise TaskDefinitionError(f"{where} has no instructions; allowed: a non-empty tuple of "
                              "non-empty strings")
  if not isinstance(d.episode_length, int) or d.episode_length < 1:
    raise TaskDefinitionError(f"{where}: episode_length={d.episode_length!r}; allowed: int >= 1")
  if d.mjcf and not d.mjcf.lstrip().startswith("<") and not os.path.isfile(d.mjcf):
    raise TaskDefinitionError(f"{where}: mjcf {d.mjcf!r} is neither MJCF text nor a file")
  config = mjx_env.TabletopEnv.default_config(episode_length=d.episode_length)
  try:
    xml = scene_xml(d, config)
    model = mujoco.MjModel.from_xml_string(xml)
  except (ValueError, OSError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise TaskDefinitionError(f"{where}: the scene does not compile: {first}") from None
  missing = _missing_names(model, d.objects)
  if missing:
    raise TaskDefinitionError(f"{where}: the scene lacks {', '.join(missing)}; allowed: a scene "
                              f"with {'; '.join(REQUIRED_MJCF_NAMES)}")
  defaults = dict(mjx_env.TabletopEnv.defaults, episode_length=d.episode_length)
  return type(f"Task_{d.name}", (DefinedTask,),
              {"definition": d, "objects": tuple(d.objects), "defaults": defaults,
               "__module__": __name__})


def _missing_names(model: mujoco.MjModel, objects) -> list[str]:
  missing = []
  for kind, name in [("body", "gripper"), ("site", "tcp"), ("key", "home")] + [
      ("joint", f"{o.name}_free") for o in objects] + [("body", o.name) for o in objects]:
    try:
      getattr(model, kind)(name)
    except KeyError:
      missing.append(f"{'keyframe' if kind == 'key' else kind} {name!r}")
  if model.nu != 3:
    missing.append(f"3 actuators (it has {model.nu})")
  return missing


class ImportTasksError(ValueError):
  """An `import_tasks` entry that does not exist or fails to import (one line)."""


def import_tasks(spec: str) -> list[str]:
  """Imports the task modules `spec` names (comma-separated files or module names).

  Each module registers its tasks with `register_task` when imported. A file is imported
  once per process, under a name derived from its absolute path, so naming it twice (or
  importing it again) does not register its tasks twice.

  Returns:
    The module names imported.

  Raises:
    ImportTasksError: a file that does not exist, a module that cannot be found, or a module
      that raises while importing (one line naming it and the error).
  """
  imported = []
  for entry in (part.strip() for part in spec.split(",")):
    if not entry:
      continue
    if _is_file_entry(entry):
      path = os.path.abspath(entry)
      if not os.path.isfile(path):
        raise ImportTasksError(f"import_tasks: no such file {entry!r}; allowed: a .py file or "
                               "a module name, comma-separated")
      name = "_dvla_tasks_" + "".join(c if c.isalnum() else "_" for c in path)
      if name not in sys.modules:
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
          module_spec.loader.exec_module(module)
        except Exception as e:  # pylint: disable=broad-except
          del sys.modules[name]
          raise ImportTasksError(f"import_tasks: {entry} raised {type(e).__name__}: "
                                 f"{_last_line(e)}") from None
    else:
      name = entry
      try:
        importlib.import_module(entry)
      except ModuleNotFoundError as e:
        if e.name and (entry == e.name or entry.startswith(e.name + ".")):
          raise ImportTasksError(f"import_tasks: no module named {entry!r}; allowed: a .py "
                                 "file or an importable module name") from None
        raise ImportTasksError(f"import_tasks: {entry} raised {type(e).__name__}: "
                               f"{_last_line(e)}") from None
      except Exception as e:  # pylint: disable=broad-except
        raise ImportTasksError(f"import_tasks: {entry} raised {type(e).__name__}: "
                               f"{_last_line(e)}") from None
    imported.append(name)
  return imported


def absolute_spec(spec: str) -> str:
  """`spec` with its file entries made absolute (module names kept), so that a run's saved
  `env.import_tasks` can be imported again from any directory."""
  entries = [part.strip() for part in spec.split(",") if part.strip()]
  return ",".join(os.path.abspath(e) if _is_file_entry(e) else e for e in entries)


def _is_file_entry(entry: str) -> bool:
  return entry.endswith(".py") or os.sep in entry


def _last_line(error: BaseException) -> str:
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return lines[-1] if lines else type(error).__name__
