"""MJX tabletop tasks: scenes, batch rendering, the registry and brax training wrappers."""

from dvla_jax.envs.mjx_env import EnvConfig
from dvla_jax.envs.mjx_env import State
from dvla_jax.envs.mjx_env import TabletopEnv
from dvla_jax.envs.registry import UnknownTaskError
from dvla_jax.envs.registry import check_task
from dvla_jax.envs.registry import list_tasks
from dvla_jax.envs.registry import make
from dvla_jax.envs.registry import refresh_reset_states
from dvla_jax.envs.registry import wrap_for_training

__all__ = [
    "EnvConfig",
    "State",
    "TabletopEnv",
    "UnknownTaskError",
    "check_task",
    "list_tasks",
    "make",
    "refresh_reset_states",
    "wrap_for_training",
]
