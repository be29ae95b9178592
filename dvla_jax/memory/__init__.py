"""Device memory: the static pool (train state, actor weight double buffer), the dynamic pool
(a ring of rollout slots with a free list), and live-memory accounting."""

from dvla_jax.memory.accounting import UNUSABLE_DONATION
from dvla_jax.memory.accounting import donated_aliases
from dvla_jax.memory.accounting import fmt_bytes
from dvla_jax.memory.accounting import live_device_bytes
from dvla_jax.memory.accounting import strict_donation
from dvla_jax.memory.accounting import tree_bytes
from dvla_jax.memory.accounting import tree_bytes_per_device
from dvla_jax.memory.pools import SlotPool
from dvla_jax.memory.pools import StaticPool
from dvla_jax.memory.pools import WeightBuffer
from dvla_jax.memory.pools import copy_tree
from dvla_jax.memory.pools import overwrite
from dvla_jax.memory.pools import overwrite_in_layout
from dvla_jax.memory.pools import report

__all__ = [
    "UNUSABLE_DONATION",
    "SlotPool",
    "StaticPool",
    "WeightBuffer",
    "copy_tree",
    "donated_aliases",
    "fmt_bytes",
    "live_device_bytes",
    "overwrite",
    "overwrite_in_layout",
    "report",
    "strict_donation",
    "tree_bytes",
    "tree_bytes_per_device",
]
