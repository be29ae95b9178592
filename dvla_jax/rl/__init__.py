"""RL math as pure functions: trajectory types, advantage estimators, PPO/GRPO losses."""

from dvla_jax.rl.advantages import gae
from dvla_jax.rl.advantages import grpo_advantages
from dvla_jax.rl.losses import grpo_loss
from dvla_jax.rl.losses import ppo_loss
from dvla_jax.rl.types import make_ppo_batch
from dvla_jax.rl.types import PPOBatch
from dvla_jax.rl.types import Transition

__all__ = [
    "PPOBatch",
    "Transition",
    "gae",
    "grpo_advantages",
    "grpo_loss",
    "make_ppo_batch",
    "ppo_loss",
]
