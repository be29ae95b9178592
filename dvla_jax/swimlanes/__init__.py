"""The swimlane pipeline: four lanes (sampling, inference, gradient, distribution) on their
plane meshes, the channels between them, timeline tracing, and the synchronous baseline."""

from dvla_jax.swimlanes.channels import Channel
from dvla_jax.swimlanes.channels import Mailbox
from dvla_jax.swimlanes.channels import StallError
from dvla_jax.swimlanes.channels import Stopped
from dvla_jax.swimlanes.lanes import FaultPlan
from dvla_jax.swimlanes.lanes import InjectedFault
from dvla_jax.swimlanes.lanes import LaneError
from dvla_jax.swimlanes.lanes import LANES
from dvla_jax.swimlanes.lanes import Supervisor
from dvla_jax.swimlanes.pipeline import AsyncPipeline
from dvla_jax.swimlanes.stages import Poison
from dvla_jax.swimlanes.stages import PolicyLanes
from dvla_jax.swimlanes.stages import PoolSlot
from dvla_jax.swimlanes.stages import Sampler
from dvla_jax.swimlanes.sync import SyncPipeline
from dvla_jax.swimlanes.tracing import Span
from dvla_jax.swimlanes.tracing import Tracer

__all__ = [
    "LANES",
    "AsyncPipeline",
    "Channel",
    "FaultPlan",
    "InjectedFault",
    "LaneError",
    "Mailbox",
    "Poison",
    "Sampler",
    "PoolSlot",
    "Span",
    "StallError",
    "PolicyLanes",
    "Stopped",
    "Supervisor",
    "SyncPipeline",
    "Tracer",
]
