"""MJX tabletop tasks: scenes, batch rendering, the LIBERO-style suite, experts and registry."""

from dvla_jax.envs.custom import import_tasks
from dvla_jax.envs.custom import ImportTasksError
from dvla_jax.envs.custom import TaskDefinition
from dvla_jax.envs.custom import TaskDefinitionError
from dvla_jax.envs.expert_rates import evaluate_expert
from dvla_jax.envs.expert_rates import expert_table
from dvla_jax.envs.mjx_env import EnvConfig
from dvla_jax.envs.mjx_env import State
from dvla_jax.envs.mjx_env import TabletopEnv
from dvla_jax.envs.registry import check_task
from dvla_jax.envs.registry import default_config
from dvla_jax.envs.registry import describe
from dvla_jax.envs.registry import has_expert
from dvla_jax.envs.registry import list_suites
from dvla_jax.envs.registry import list_tasks
from dvla_jax.envs.registry import make
from dvla_jax.envs.registry import make_multi
from dvla_jax.envs.registry import refresh_reset_states
from dvla_jax.envs.registry import register_task
from dvla_jax.envs.registry import resolve_tasks
from dvla_jax.envs.registry import SUITE_PREFIX
from dvla_jax.envs.registry import suite_tasks
from dvla_jax.envs.registry import task_keys
from dvla_jax.envs.registry import task_suite
from dvla_jax.envs.registry import TaskFromKey
from dvla_jax.envs.registry import UnknownTaskError
from dvla_jax.envs.registry import wrap_for_training
from dvla_jax.envs.scene import ObjectSpec
from dvla_jax.envs.suite import SuiteEnv
from dvla_jax.envs.tasks import TASKS
from dvla_jax.envs.tasks import TaskSpec

__all__ = [
    "EnvConfig",
    "ImportTasksError",
    "ObjectSpec",
    "TaskDefinition",
    "TaskDefinitionError",
    "SUITE_PREFIX",
    "State",
    "SuiteEnv",
    "TASKS",
    "TabletopEnv",
    "TaskFromKey",
    "TaskSpec",
    "UnknownTaskError",
    "check_task",
    "default_config",
    "describe",
    "has_expert",
    "import_tasks",
    "evaluate_expert",
    "expert_table",
    "list_suites",
    "list_tasks",
    "make",
    "make_multi",
    "refresh_reset_states",
    "register_task",
    "resolve_tasks",
    "suite_tasks",
    "task_keys",
    "task_suite",
    "wrap_for_training",
]
