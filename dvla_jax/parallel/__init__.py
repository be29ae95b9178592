"""Meshes per plane, logical-axis sharding rules, placements and sharded model creation."""

from dvla_jax.parallel.mesh import PlacementError
from dvla_jax.parallel.mesh import PlaneMeshes
from dvla_jax.parallel.mesh import make_plane_meshes
from dvla_jax.parallel.mesh import resolve_device_ids
from dvla_jax.parallel.placement import Placement
from dvla_jax.parallel.sharding import DEFAULT_RULES
from dvla_jax.parallel.sharding import MeshDivisionError
from dvla_jax.parallel.sharding import check_mesh_divides
from dvla_jax.parallel.sharding import create_sharded_model
from dvla_jax.parallel.sharding import logical_to_mesh_sharding
from dvla_jax.parallel.sharding import logical_to_pspec

__all__ = [
    "DEFAULT_RULES",
    "MeshDivisionError",
    "Placement",
    "PlacementError",
    "PlaneMeshes",
    "check_mesh_divides",
    "create_sharded_model",
    "logical_to_mesh_sharding",
    "logical_to_pspec",
    "make_plane_meshes",
    "resolve_device_ids",
]
