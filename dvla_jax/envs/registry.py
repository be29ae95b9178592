"""Task registry: names -> constructors, suites, plus the standard training wrappers."""

import difflib
import functools
from typing import Callable, Sequence

from brax.envs import base as brax_base
from brax.envs.wrappers import training as brax_wrappers
import jax
import jax.numpy as jnp

from dvla_jax.envs import custom
from dvla_jax.envs import mjx_env
from dvla_jax.envs import playground
from dvla_jax.envs import suite
from dvla_jax.envs import tasks
from dvla_jax.envs import touch

_Ctor = Callable[[mjx_env.EnvConfig], mjx_env.TabletopEnv]
_TASKS: dict[str, tuple[_Ctor, type[mjx_env.TabletopEnv], str, str]] = {
    "touch_cube": (touch.TouchCube, touch.TouchCube, "",
                   "touch the red/green/blue cube named in the instruction (palm gripper)"),
}
for _spec in tasks.TASKS:
  _TASKS[_spec.name] = (functools.partial(suite.SuiteEnv, task_names=(_spec.name,)),
                        suite.SuiteEnv, _spec.suite, _spec.description)


SUITE_PREFIX = "suite:"


def register_task(definition: custom.TaskDefinition) -> None:
  """Adds a task of your own to the registry (see `dvla_jax.envs.custom`).

  Raises:
    custom.TaskDefinitionError: the name is taken, or the definition is incomplete or its
      scene does not compile (one line).
  """
  if not isinstance(definition, custom.TaskDefinition):
    raise custom.TaskDefinitionError(
        f"register_task got a {type(definition).__name__}; allowed: an envs.TaskDefinition")
  if definition.name in _TASKS:
    raise custom.TaskDefinitionError(
        f"task {definition.name!r} is already registered; allowed: a new name (registered: "
        f"{len(_TASKS)} tasks, `python -m dvla_jax.envs --list`)")
  env_class = custom.make_class(definition)
  _TASKS[definition.name] = (env_class, env_class, definition.suite,
                             definition.description or f"user task: {definition.instructions[0]}")


def has_expert(name: str) -> bool:
  """Whether task `name` has a scripted expert (for SFT and the RL warm start)."""
  if name.startswith(playground.PREFIX):
    return False  # Playground tasks come without scripted experts.
  check_task(name)
  return custom.has_expert(_TASKS[name][1])


class UnknownTaskError(KeyError):
  """An unknown task or suite name; the message lists the closest registered names."""

  def __str__(self):
    return self.args[0]


def list_tasks() -> list[str]:
  """Registered task names, sorted."""
  return sorted(_TASKS)


def list_suites() -> list[str]:
  """The LIBERO-style suites: spatial, object, goal, long."""
  return list(tasks.SUITES)


def suite_tasks(suite_name: str) -> list[str]:
  """Task names of one suite (ValueError naming the suites if unknown)."""
  return tasks.suite_tasks(suite_name)


def describe(name: str) -> str:
  """One line saying what task `name` asks for."""
  check_task(name)
  return _TASKS[name][3]


def task_suite(name: str) -> str:
  """The suite `name` belongs to, or "" for a stand-alone task."""
  check_task(name)
  return _TASKS[name][2]


def check_task(name: str) -> None:
  """Raises UnknownTaskError (one line naming the closest tasks) if `name` is not registered."""
  if name not in _TASKS:
    close = difflib.get_close_matches(name, _TASKS, n=3, cutoff=0.3) or list_tasks()[:3]
    raise UnknownTaskError(f"unknown task {name!r}; closest: {', '.join(close)}")


def resolve_tasks(spec: str) -> list[str]:
  """The tasks a task spec names, in order.

  A spec is one registered task (`touch_cube`), a whole suite (`suite:goal`), a
  comma-separated list of suite tasks (`goal_push_cube,goal_place_cube`), or a MuJoCo
  Playground dm_control_suite task (`playground:CartpoleBalance`); a suite or a list runs in
  one `SuiteEnv` (see `make`).

  Raises:
    UnknownTaskError: an unknown task or suite (one line naming the closest ones).
    ValueError: a list holding a stand-alone task, or an entry that is empty or repeated; an
      unknown Playground task.
    playground.PlaygroundMissingError: a Playground task without the playground package.
  """
  if spec.startswith(playground.PREFIX):
    playground.check_name(spec[len(playground.PREFIX):])
    return [spec]
  if spec.startswith(SUITE_PREFIX):
    name = spec[len(SUITE_PREFIX):]
    if name not in tasks.SUITES:
      allowed = ", ".join(SUITE_PREFIX + s for s in tasks.SUITES)
      raise UnknownTaskError(f"unknown suite in {spec!r}; allowed: {allowed}")
    return tasks.suite_tasks(name)
  if "," not in spec:
    check_task(spec)
    return [spec]
  names = [part.strip() for part in spec.split(",")]
  for name in names:
    if not name:
      raise ValueError(f"empty entry in the task list {spec!r}; allowed: suite task names "
                       "separated by commas")
    check_task(name)
    if name not in tasks.BY_NAME:
      raise ValueError(f"{name!r} in the task list {spec!r} is not a suite task; allowed in a "
                       "list: suite tasks (they share one scene), or a single task")
  if len(set(names)) != len(names):
    raise ValueError(f"the task list {spec!r} repeats a task; allowed: each task once")
  return names


def default_config(name: str, config: mjx_env.EnvConfig | None = None,
                   **changes) -> mjx_env.EnvConfig:
  """`config` (default EnvConfig()) with `changes`, None fields set to task `name`'s defaults.

  Raises:
    UnknownTaskError: `name` is not registered.
    ValueError: a field is out of range (one line naming it).
  """
  check_task(name)
  if name in tasks.BY_NAME:
    return suite.SuiteEnv.default_config(config, task_names=(name,), **changes)
  return _TASKS[name][1].default_config(config, **changes)


def make(spec: str, config: mjx_env.EnvConfig | None = None) -> mjx_env.TabletopEnv:
  """Builds the single-world env of a task spec (see `wrap_for_training` for the batched one).

  Args:
    spec: a registered task, or a spec of several suite tasks (`suite:goal`, or names
      separated by commas; see `resolve_tasks`), which builds one `make_multi` env for all.
    config: env settings; None fields (or config=None) take the task's defaults (for several
      tasks, the episode limit is the longest task's).

  Returns:
    The env; `env.config` is the resolved config.

  Raises:
    UnknownTaskError, ValueError: a bad spec (see `resolve_tasks`).
  """
  names = resolve_tasks(spec)
  if len(names) > 1:
    return make_multi(names, config)
  if names[0].startswith(playground.PREFIX):
    # Playground's own episode length (divided by H) when the config leaves it open.
    return playground.make(names[0][len(playground.PREFIX):], config or mjx_env.EnvConfig())
  return _TASKS[names[0]][0](default_config(names[0], config))


def make_multi(names: Sequence[str], config: mjx_env.EnvConfig | None = None) -> suite.SuiteEnv:
  """One env that runs several suite tasks: each episode draws one of `names` per world.

  All suite tasks share a scene, so this compiles once for a whole suite, e.g.
  `make_multi(suite_tasks("goal"), config)`; the episode limit is the longest task's.
  """
  for name in names:
    check_task(name)
    if name not in tasks.BY_NAME:
      raise ValueError(f"{name!r} is not a suite task; make_multi takes: "
                       f"{', '.join(t.name for t in tasks.TASKS)}")
  return suite.SuiteEnv(config or mjx_env.EnvConfig(), names)


class TaskFromKey(brax_base.Wrapper):
  """A multi-task `SuiteEnv` whose `reset` takes the world's task from its key.

  brax's batching wrappers hand `reset` one key per world and nothing else, so the task rides
  along as the key's last word (`task_keys`) and reaches `SuiteEnv.reset_task`. Wrap the
  single-world env with this before `wrap_for_training` (or the randomised variant); every
  reset of the wrapped env then needs such keys.
  """

  def reset(self, rng: jax.Array) -> mjx_env.State:
    return self.env.reset_task(rng[:-1], rng[-1].astype(jnp.int32))

  @property
  def unwrapped(self):
    # brax's DomainRandomizationVmapWrapper swaps `unwrapped.sys` and calls `unwrapped.reset`;
    # stopping here routes its per-world physics model through this reset.
    return self

  @property
  def backend(self) -> str:
    return self.env.backend

  @property
  def sys(self):
    return self.env.sys

  @sys.setter
  def sys(self, model):
    self.env.sys = model


def task_keys(keys: jax.Array, task: jax.Array) -> jax.Array:
  """Raw keys uint32 [B, K] with each world's task index [B] appended, for `TaskFromKey`."""
  return jnp.concatenate([keys, task.astype(keys.dtype)[:, None]], axis=-1)


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
  this each env would replay one layout forever. Only the observation keys the env itself
  emits are kept (a wrapper above it, e.g. the model side's instruction tokens, may add
  others to `fresh.obs`).
  """
  info = dict(state.info)
  info["first_pipeline_state"] = fresh.pipeline_state
  info["first_obs"] = {k: fresh.obs[k] for k in state.info["first_obs"]}
  info["first_task"] = fresh.info["task"]
  return state.replace(info=info)
