"""Meshes per plane, logical-axis sharding rules, placements, sharded model creation, the
ahead-of-time memory planner and topology-aware weight replication."""

from dvla_jax.parallel.broadcast import bridge_mesh
from dvla_jax.parallel.broadcast import broadcast_via_collective
from dvla_jax.parallel.broadcast import pieces_from_shardings
from dvla_jax.parallel.broadcast import replicate
from dvla_jax.parallel.broadcast import Route
from dvla_jax.parallel.broadcast import route_tree
from dvla_jax.parallel.memory_plan import compiled_memory
from dvla_jax.parallel.memory_plan import format_plan
from dvla_jax.parallel.memory_plan import MemoryPlan
from dvla_jax.parallel.memory_plan import parse_mesh
from dvla_jax.parallel.memory_plan import plan_memory
from dvla_jax.parallel.memory_plan import StepPlan
from dvla_jax.parallel.mesh import make_plane_meshes
from dvla_jax.parallel.mesh import PlacementError
from dvla_jax.parallel.mesh import PlaneMeshes
from dvla_jax.parallel.mesh import resolve_device_ids
from dvla_jax.parallel.placement import local_replica
from dvla_jax.parallel.placement import Placement
from dvla_jax.parallel.sharding import check_mesh_divides
from dvla_jax.parallel.sharding import create_sharded_model
from dvla_jax.parallel.sharding import DEFAULT_RULES
from dvla_jax.parallel.sharding import logical_to_mesh_sharding
from dvla_jax.parallel.sharding import logical_to_pspec
from dvla_jax.parallel.sharding import MeshDivisionError
from dvla_jax.parallel.topology import BroadcastPlan
from dvla_jax.parallel.topology import LINK_CLASSES
from dvla_jax.parallel.topology import lower_bounds
from dvla_jax.parallel.topology import merge_pieces
from dvla_jax.parallel.topology import Piece
from dvla_jax.parallel.topology import pieces_between
from dvla_jax.parallel.topology import plan_naive
from dvla_jax.parallel.topology import plan_topology_aware
from dvla_jax.parallel.topology import split_layout
from dvla_jax.parallel.topology import Topology
from dvla_jax.parallel.topology import Transfer
from dvla_jax.parallel.topology import validate_plan

__all__ = [
    "BroadcastPlan",
    "DEFAULT_RULES",
    "LINK_CLASSES",
    "MemoryPlan",
    "MeshDivisionError",
    "Piece",
    "Placement",
    "PlacementError",
    "PlaneMeshes",
    "Route",
    "StepPlan",
    "Topology",
    "Transfer",
    "bridge_mesh",
    "broadcast_via_collective",
    "check_mesh_divides",
    "compiled_memory",
    "create_sharded_model",
    "format_plan",
    "logical_to_mesh_sharding",
    "logical_to_pspec",
    "lower_bounds",
    "local_replica",
    "make_plane_meshes",
    "merge_pieces",
    "parse_mesh",
    "pieces_between",
    "pieces_from_shardings",
    "plan_memory",
    "plan_naive",
    "plan_topology_aware",
    "replicate",
    "resolve_device_ids",
    "route_tree",
    "split_layout",
    "validate_plan",
]
