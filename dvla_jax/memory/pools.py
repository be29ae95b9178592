"""The two device memory pools: static (long-lived state) and dynamic (a ring of rollout slots).

Static pool: the learner train state and the actor's weight double buffer (`WeightBuffer`:
an active and an incoming copy, swapped by version). Its arrays are allocated once and
afterwards only replaced by the outputs of donating functions, which XLA writes into the
donated buffers, so the bytes stay where they are.

Dynamic pool (`SlotPool`): K rollout slots `[T, envs_per_group, ...]` for every field,
allocated once on the actor devices. A slot is taken from the free list (`acquire`), filled
step by step with a donated in-place write (`write_step`), handed to the learner and returned
(`release`). An empty free list is backpressure: `acquire` waits and may return None, but it
never allocates.

Both pools count their bytes per device (`report`) so the start-up log shows where the
memory went, and `accounting.live_device_bytes` can check that they hold nearly all of it.
"""

import collections
import threading
from typing import Any, Callable, Optional

from absl import logging
import jax
import jax.numpy as jnp

from dvla_jax.memory import accounting
from dvla_jax.models import trainable as trainable_lib


def _write_step(slot: Any, t: jax.Array, step: Any) -> Any:
  def put(buf, x):
    x = jnp.broadcast_to(jnp.asarray(x).astype(buf.dtype), buf.shape[1:])
    return jax.lax.dynamic_update_index_in_dim(buf, x, t, 0)

  return jax.tree.map(put, slot, step)


def _overwrite(dst: Any, src: Any) -> Any:
  # A full-size update of the donated `dst` rather than `return src`: jit would forward an
  # input unchanged and the copy would never land in the pool's buffer.
  return jax.tree.map(
      lambda d, s: jax.lax.dynamic_update_slice(d, s.astype(d.dtype), (0,) * d.ndim), dst, src)


def _overwrite_in_layout(dst: Any, src: Any, shardings: tuple) -> Any:
  # The result pinned to `dst`'s shardings: left to itself XLA may lay it out like `src`
  # (e.g. sharded weights into a replicated buffer), and the donation would then be unusable.
  out = _overwrite(dst, src)
  return jax.tree.map(jax.lax.with_sharding_constraint, out,
                      jax.tree.unflatten(jax.tree.structure(out), shardings))


# Donating jits shared by every pool (jit caches one program per shape and sharding).
write_step = jax.jit(_write_step, donate_argnums=0)
overwrite = jax.jit(_overwrite, donate_argnums=0)
_overwrite_in_layout_jit = jax.jit(_overwrite_in_layout, static_argnums=2, donate_argnums=0)


def overwrite_in_layout(dst: Any, src: Any) -> Any:
  """`overwrite`, with the result in `dst`'s own shardings whatever `src`'s are (a copy
  into a replicated buffer from sharded arrays gathers them)."""
  shardings = tuple(x.sharding for x in jax.tree.leaves(dst))
  return _overwrite_in_layout_jit(dst, src, shardings)


# A fresh copy of every leaf (new buffers, same shardings).
copy_tree = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))


class SlotPool:
  """The dynamic pool: a fixed ring of rollout slots with a free list.

  Thread-safe: one lane acquires and writes, another releases.
  """

  def __init__(self, make_slot: Callable[[], Any], num_slots: int, name: str = "rollout"):
    """Allocates `num_slots` slots (the only allocation the pool ever makes).

    Args:
      make_slot: `() -> slot pytree`, typically a jit with `out_shardings` on the actor mesh.
      num_slots: K, the size of the ring (>= 1).
      name: the pool's name in reports.
    """
    if num_slots < 1:
      raise ValueError(f"num_slots must be >= 1, got {num_slots}")
    self.name = name
    self.num_slots = num_slots
    self._free = collections.deque(make_slot() for _ in range(num_slots))
    self._cond = threading.Condition()
    self._in_use = 0
    self.high_water = 0
    first = self._free[0]
    self._treedef = jax.tree.structure(first)
    self._avals = [(x.shape, x.dtype) for x in jax.tree.leaves(first)]
    per_device = accounting.tree_bytes_per_device(first)
    # Device bytes: a slot replicated on n devices counts n times, as live_device_bytes does.
    self.bytes_per_slot = sum(per_device.values())
    self._per_device = {d: b * num_slots for d, b in per_device.items()}

  @property
  def free_slots(self) -> int:
    with self._cond:
      return len(self._free)

  def acquire(self, timeout: Optional[float] = None) -> Optional[Any]:
    """A free slot; waits up to `timeout` seconds (None: forever) and returns None if none.

    Args:
      timeout: seconds to wait while every slot is in use; 0 does not wait.

    Returns:
      A slot, or None when none was freed in time (backpressure).
    """
    with self._cond:
      if not self._cond.wait_for(lambda: self._free, timeout):
        return None
      self._in_use += 1
      self.high_water = max(self.high_water, self._in_use)
      return self._free.popleft()

  def release(self, slot: Any) -> None:
    """Returns a slot (the one `acquire` gave, or its donated successor) to the free list.

    Raises:
      ValueError: `slot` is not shaped like the pool's slots, or every slot is free already
        (a double release would let two writers share one slot).
    """
    leaves = jax.tree.leaves(slot)
    if (jax.tree.structure(slot) != self._treedef or
        [(x.shape, x.dtype) for x in leaves] != self._avals):
      raise ValueError(f"{self.name}: released slot is not one of this pool's slots")
    with self._cond:
      if self._in_use == 0:
        raise ValueError(f"{self.name}: release without a matching acquire")
      self._in_use -= 1
      self._free.append(slot)
      self._cond.notify()

  def per_device_bytes(self) -> dict[Any, int]:
    return dict(self._per_device)

  @property
  def total_bytes(self) -> int:
    return self.bytes_per_slot * self.num_slots


class WeightBuffer:
  """The actor's weight double buffer: the reader acts with one copy while the other fills.

  One writer (the distribution lane) calls `stage`, one reader (the inference lane) calls
  `take_newest` between steps. The writer always overwrites the copy the reader does not
  hold, in place (donated), so the two copies are the only weight buffers the actors ever
  use.

  With a frozen `base` (partial fine-tuning, e.g. LoRA: `models.trainable.split`), the two
  copies hold the trainable leaves only, each version's delta, and the reader gets them
  merged with the one base, which is never copied or rewritten.
  """

  def __init__(self, params: Any, version: int = 0, base: Any = None):
    """Args:
      params: the first weights (the trainable part, with `base`), already on the devices
        they are used on; a second copy is made.
      version: their policy version.
      base: the frozen leaves (None in place of the trainable ones), or None.
    """
    self._bufs = [params, copy_tree(params)]
    self._versions = [version, -1]
    self._held = 0  # The copy the reader acts with.
    self._lock = threading.Lock()
    self.base = base
    self.swaps = 0

  @property
  def version(self) -> int:
    """The version the reader holds."""
    with self._lock:
      return self._versions[self._held]

  def stage(self, version: int, params: Any) -> None:
    """Copies `params` into the incoming copy (in place) and marks it `version`."""
    with self._lock:
      incoming = 1 - self._held
      buf = self._bufs[incoming]
      self._bufs[incoming] = None  # Donated below: nobody may read the stale reference.
    buf = jax.block_until_ready(overwrite_in_layout(buf, params))
    with self._lock:
      self._bufs[incoming] = buf
      self._versions[incoming] = version

  def take_newest(self) -> tuple[int, Any]:
    """Swaps to the incoming copy if it is newer; returns (version, params) to act with
    (merged with the base, if any).

    The params returned stay valid until the next call.
    """
    with self._lock:
      incoming = 1 - self._held
      if self._bufs[incoming] is not None and self._versions[incoming] > self._versions[
          self._held]:
        self._held = incoming
        self.swaps += 1
      version, params = self._versions[self._held], self._bufs[self._held]
    if self.base is not None:
      params = trainable_lib.merge(params, self.base)
    return version, params

  def trees(self) -> list[Any]:
    with self._lock:
      bufs = [b for b in self._bufs if b is not None]
    return bufs + ([self.base] if self.base is not None else [])


class StaticPool:
  """Named long-lived trees (train state, weight buffers) and their bytes per device."""

  def __init__(self):
    self._entries: dict[str, Callable[[], list[Any]]] = {}

  def register(self, name: str, trees: Callable[[], list[Any]]) -> None:
    """Adds an entry; `trees()` returns its current trees (they change as donation replaces
    them, the bytes do not)."""
    self._entries[name] = trees

  def trees(self, name: str) -> list[Any]:
    """The current trees of entry `name`."""
    return self._entries[name]()

  def per_device_bytes(self) -> dict[str, dict[Any, int]]:
    out = {}
    for name, trees in self._entries.items():
      counts: dict[Any, int] = collections.Counter()
      for tree in trees():
        counts.update(accounting.tree_bytes_per_device(tree))
      out[name] = dict(counts)
    return out


def report(static: StaticPool, dynamic: SlotPool, log: bool = True) -> dict[str, Any]:
  """Bytes per pool, per entry and per device, logged once at start-up.

  All counts are device bytes (a replicated array counts once per device holding it).

  Args:
    static: the static pool.
    dynamic: the dynamic pool.
    log: whether to log the report.

  Returns:
    {"static": {"bytes", "entries": {name: bytes}, "per_device": {device: bytes}},
     "dynamic": {"bytes", "bytes_per_slot", "num_slots", "high_water", "per_device"},
     "total_bytes", "per_device": both pools}; devices are named by `str(device)`.
  """
  entries = static.per_device_bytes()
  static_dev: dict[str, int] = collections.Counter()
  for per_dev in entries.values():
    static_dev.update({str(d): b for d, b in per_dev.items()})
  out = {
      "static": {"bytes": sum(static_dev.values()),
                 "entries": {n: sum(v.values()) for n, v in entries.items()},
                 "per_device": dict(static_dev)},
      "dynamic": {"bytes": dynamic.total_bytes, "bytes_per_slot": dynamic.bytes_per_slot,
                  "num_slots": dynamic.num_slots, "high_water": dynamic.high_water,
                  "per_device": {str(d): b for d, b in dynamic.per_device_bytes().items()}},
  }
  out["total_bytes"] = out["static"]["bytes"] + out["dynamic"]["bytes"]
  per_device = collections.Counter(out["static"]["per_device"])
  per_device.update(out["dynamic"]["per_device"])
  out["per_device"] = dict(per_device)
  if log:
    logging.info("memory pools: static %s (%s), dynamic %s (%d slots x %s); per device: %s",
                 accounting.fmt_bytes(out["static"]["bytes"]),
                 ", ".join(f"{n} {accounting.fmt_bytes(b)}"
                           for n, b in out["static"]["entries"].items()),
                 accounting.fmt_bytes(dynamic.total_bytes), dynamic.num_slots,
                 accounting.fmt_bytes(dynamic.bytes_per_slot),
                 {d: accounting.fmt_bytes(b) for d, b in sorted(per_device.items())})
  return out
