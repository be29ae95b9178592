"""Meshes, logical-axis sharding rules and sharded model creation."""

from dvla_jax.parallel.sharding import DEFAULT_RULES
from dvla_jax.parallel.sharding import create_sharded_model
from dvla_jax.parallel.sharding import logical_to_mesh_sharding
from dvla_jax.parallel.sharding import logical_to_pspec

__all__ = [
    "DEFAULT_RULES",
    "create_sharded_model",
    "logical_to_mesh_sharding",
    "logical_to_pspec",
]
