"""Device memory accounting: bytes of trees and of every live array, and donation checks.

The pools' promise is that steady state allocates nothing: after warm-up the count and
bytes of `jax.live_arrays()` stay flat and the pools hold nearly all of them. These helpers
measure that, and turn a donation XLA could not use (a silent extra buffer) into an error.
"""

import collections
import contextlib
import gc
import math
import warnings
from typing import Any, Iterator

import jax

# The warning jax emits when a donated input cannot be aliased to an output.
UNUSABLE_DONATION = "Some donated buffers were not usable"


def tree_bytes(tree: Any) -> int:
  """Logical bytes of every array leaf (a replicated array counts once)."""
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype"))


def tree_bytes_per_device(tree: Any) -> dict[Any, int]:
  """Bytes each addressable device holds for `tree` (replicas count on every device)."""
  counts: dict[Any, int] = collections.Counter()
  for x in jax.tree.leaves(tree):
    sharding = getattr(x, "sharding", None)
    if sharding is None:
      continue
    # From the sharding alone: `x.addressable_shards` would build (and jax keeps) a new array
    # per shard, so counting live arrays through it would change their number.
    per_device = math.prod(sharding.shard_shape(x.shape)) * x.dtype.itemsize
    for device in sharding.addressable_devices:
      counts[device] += per_device
  return dict(counts)


def live_device_bytes() -> tuple[int, int]:
  """(count, bytes on this process's devices) of every live jax array, after a GC pass.

  Bytes are per device buffer, so a replicated array counts once per device, as the
  pools' `per_device_bytes` do.
  """
  gc.collect()
  arrays = [x for x in jax.live_arrays() if not x.is_deleted()]
  return len(arrays), sum(sum(tree_bytes_per_device(x).values()) for x in arrays)


def fmt_bytes(n: int) -> str:
  """`n` bytes as a short human string (binary units)."""
  for unit in ("B", "KiB", "MiB", "GiB"):
    if abs(n) < 1024 or unit == "GiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024
  return f"{n} B"


@contextlib.contextmanager
def strict_donation() -> Iterator[None]:
  """Inside, a donation XLA cannot use raises instead of warning (for tests and debugging)."""
  with warnings.catch_warnings():
    warnings.filterwarnings("error", message=f".*{UNUSABLE_DONATION}.*")
    yield


def donated_aliases(jitted: Any, *args, **kwargs) -> int:
  """How many outputs of `jitted(*args)` XLA writes into donated input buffers.

  Args:
    jitted: a `jax.jit`-wrapped function with `donate_argnums`.
    *args: example arguments (arrays or `jax.ShapeDtypeStruct`s).
    **kwargs: example keyword arguments.

  Returns:
    The number of input/output alias pairs in the compiled program.
  """
  with strict_donation():
    text = jitted.lower(*args, **kwargs).compile().as_text()
  header = next((line for line in text.splitlines() if "input_output_alias" in line), "")
  if not header:
    return 0
  aliases = header.split("input_output_alias={", 1)[1]
  return aliases.count("may-alias") + aliases.count("must-alias")
