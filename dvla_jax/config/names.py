"""Names other packages own, checked without importing them at start-up: task specs
(`env.task`: a task, `suite:<suite>`, a list of suite tasks, `playground:<name>`) and model
presets. `registered_tasks` and `model_presets` fetch the lists when the packages exist.
"""

import difflib
import importlib
import importlib.util
import sys
from typing import Callable, Collection, Mapping, Optional, Union

from dvla_jax.config.errors import ConfigError

# A list of allowed names, or a zero-argument function returning one (None: not known).
NameSource = Union[Collection[str], Callable[[], Optional[Collection[str]]], None]


def _resolve(names: NameSource) -> Optional[Collection[str]]:
  return names() if callable(names) else names


def check_name(path: str, value: str, names: NameSource) -> None:
  allowed = _resolve(names)
  if allowed is not None and value not in allowed:
    raise ConfigError(f"{path}={value!r} unknown; allowed: {', '.join(sorted(allowed))}")


_SUITE_PREFIX = "suite:"  # As `dvla_jax.envs.SUITE_PREFIX`.


_PLAYGROUND_PREFIX = "playground:"


def installed(module: str) -> bool:
  """Whether `module` can be imported (without importing it)."""
  if module in sys.modules:
    return sys.modules[module] is not None  # None: imports of it are blocked.
  return importlib.util.find_spec(module) is not None


def _check_playground(path: str, spec: str) -> None:
  """`playground:<dm_control_suite task>`: the package must be installed and know the task."""
  name = spec[len(_PLAYGROUND_PREFIX):]
  if not installed("mujoco_playground"):
    raise ConfigError(f"{path}={spec!r} needs the playground package; allowed: pip install "
                      "playground==0.2.0 (or the project's dev extra: pip install -e .[dev])")
  adapter = _optional_module("dvla_jax.envs.playground")
  if adapter is not None:
    try:
      adapter.check_name(name)
    except ValueError as e:
      raise ConfigError(f"{path}={spec!r}: {e}") from None


def check_task_spec(path: str, spec: str, names: NameSource) -> None:
  """A task spec as `dvla_jax.envs.resolve_tasks` reads it: a task, `suite:<suite>`, or a
  comma-separated list of suite tasks.

  `names` maps each task to its suite ("" for a stand-alone task); a plain list of names
  allows checking the names only.
  """
  if spec.startswith(_PLAYGROUND_PREFIX):
    _check_playground(path, spec)
    return
  allowed = _resolve(names)
  if allowed is None:
    return
  suite_of = allowed if isinstance(allowed, Mapping) else None
  if spec.startswith(_SUITE_PREFIX):
    if suite_of is None:
      return
    suites = sorted({suite for suite in suite_of.values() if suite})
    if spec[len(_SUITE_PREFIX):] not in suites:
      listed = ", ".join(_SUITE_PREFIX + suite for suite in suites)
      raise ConfigError(f"{path}={spec!r}: unknown suite; allowed: {listed}, a task name, or "
                        "suite tasks separated by commas")
    return
  if "," not in spec:
    check_name(path, spec, allowed)
    return
  parts = [part.strip() for part in spec.split(",")]
  suite_tasks = sorted(n for n in allowed if suite_of is None or suite_of[n])
  for part in parts:
    if part not in allowed:
      close = difflib.get_close_matches(part, suite_tasks, n=3, cutoff=0.3) or suite_tasks[:3]
      raise ConfigError(f"{path}={spec!r}: unknown task {part!r}; allowed: suite tasks "
                        f"separated by commas (closest: {', '.join(close)})")
    if suite_of is not None and not suite_of[part]:
      raise ConfigError(f"{path}={spec!r}: {part!r} is not a suite task; allowed in a list: "
                        "suite tasks (they share one scene), or a single task")
  if len(set(parts)) != len(parts):
    raise ConfigError(f"{path}={spec!r} repeats a task; allowed: each task once")


def _optional_module(name: str):
  """Imports `name`, or returns None if that module (not one it imports) does not exist."""
  try:
    return importlib.import_module(name)
  except ModuleNotFoundError as e:
    if e.name is not None and (name == e.name or name.startswith(e.name + ".")):
      return None
    raise


def registered_tasks() -> Optional[dict[str, str]]:
  """Task name -> suite ("" for a stand-alone task) from `dvla_jax.envs.registry`; None if
  there is no registry."""
  registry = _optional_module("dvla_jax.envs.registry")
  list_tasks = getattr(registry, "list_tasks", None)
  task_suite = getattr(registry, "task_suite", None)
  if not list_tasks:
    return None
  return {name: task_suite(name) if task_suite else "" for name in list_tasks()}


def model_presets() -> Optional[list[str]]:
  """Preset names from `dvla_jax.models.PRESETS`; None if the models package has none."""
  presets = getattr(_optional_module("dvla_jax.models"), "PRESETS", None)
  return list(presets) if presets is not None else None
