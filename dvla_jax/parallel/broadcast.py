"""Weight replication from the learner's layout to the actors', following the topology.

One process (every source and destination device addressable here): `route_tree` works out,
for each array and each block of it that destination devices want, one leader device per
host; `replicate` then runs the route as JAX transfers:

  1. one copy of each block into each host that wants it and lacks it, at the host's
     leader (from the source shards wherever they live); where the host holds the block
     already, each of its devices copies it from there over the host's own links;
  2. fan-out from the leader to the host's other devices;
  3. the per-device buffers assembled, without copying, into arrays with the destination
     shardings (`jax.make_array_from_single_device_arrays`).

The result equals `jax.device_put(params, dst_shardings)`. `replicate(..., naive=True)` is
the comparison: every destination device pulls its own copy from the source. The route's
`plan` and `naive_plan` (`topology.BroadcastPlan`) count the bytes each moves per link class;
the executor's cross-host bytes equal the plan's, while inside a host that already holds part
of a block it re-sends the whole block (one device_put per block, not per piece).

Across processes JAX cannot `device_put` into a replicated target that spans processes, so
the weights travel by a collective over a mesh that spans both planes (`bridge_mesh`: the
learner mesh stacked on an equally shaped actor mesh along a "plane" axis). In
`broadcast_via_collective` each learner device sends its shard to the actor device in the
same mesh position (one collective permute, so every byte crosses the plane boundary once),
and the actor mesh then reshards within itself, where XLA's collectives run over the actor
mesh in its device order; build that mesh host by host (`Topology.devices`) so the fan-out
crosses each host boundary once.
"""

import dataclasses
import functools
import itertools
from typing import Any, Optional

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import SingleDeviceSharding
import numpy as np

from dvla_jax.parallel import topology as topology_lib

Block = tuple[tuple[int, int], ...]  # (start, stop) per dimension


def _block(index: tuple[slice, ...], shape: tuple[int, ...]) -> Block:
  return tuple((s.start or 0, n if s.stop is None else s.stop) for s, n in zip(index, shape))


def _overlaps(a: Block, b: Block) -> bool:
  return all(max(lo, lo2) < min(hi, hi2) for (lo, hi), (lo2, hi2) in zip(a, b))


def _contains(outer: Block, inner: Block) -> bool:
  return all(a <= c and d <= b for (a, b), (c, d) in zip(outer, inner))


def _blocks(sharding, shape) -> dict[Any, Block]:
  return {d: _block(idx, shape) for d, idx in sharding.devices_indices_map(shape).items()}


@functools.lru_cache(maxsize=1024)
def _leaf_pieces(shape, itemsize, src, dst, topology) -> tuple[topology_lib.Piece, ...]:
  """Pieces of one array: the cells between every source and destination block boundary."""
  src_blocks, dst_blocks = _blocks(src, shape), _blocks(dst, shape)
  cuts = [sorted({0, n} | {b[k][i] for b in (*src_blocks.values(), *dst_blocks.values())
                          for i in (0, 1)}) for k, n in enumerate(shape)]
  pieces = []
  for cell in itertools.product(*[list(zip(c[:-1], c[1:])) for c in cuts]):
    size = itemsize * int(np.prod([b - a for a, b in cell]))
    holders = sorted(topology.index(d) for d, b in src_blocks.items() if _contains(b, cell))
    wanters = sorted(topology.index(d) for d, b in dst_blocks.items() if _contains(b, cell))
    pieces.append(topology_lib.Piece(size, tuple(holders), tuple(wanters)))
  return tuple(pieces)


def pieces_from_shardings(tree: Any, dst_shardings: Any,
                          topology: topology_lib.Topology) -> list[topology_lib.Piece]:
  """The pieces that move when `tree` goes from its shardings to `dst_shardings`.

  Args:
    tree: arrays or `jax.ShapeDtypeStruct`s carrying their (source) `sharding`.
    dst_shardings: a matching tree of destination shardings.
    topology: a topology built from live devices (`Topology.from_devices`).

  Returns:
    Pieces with identical holders and wanters merged (see `topology.merge_pieces`).
  """
  pieces = []
  for x, dst in zip(jax.tree.leaves(tree), jax.tree.leaves(dst_shardings)):
    pieces += _leaf_pieces(tuple(x.shape), np.dtype(x.dtype).itemsize, x.sharding, dst,
                           topology)
  return topology_lib.merge_pieces(pieces)


@dataclasses.dataclass(frozen=True)
class _Unit:
  """One block into one host: `leader` gets it from `source` (None: from the source array's
  shards, wherever they are; `crosses`: some of them are on other hosts), then copies it to
  `fanout`."""

  block: Block
  full: bool
  source: Optional[Any]
  leader: Any
  fanout: tuple[Any, ...]
  crosses: bool


@dataclasses.dataclass(frozen=True, eq=False)
class Route:
  """How `replicate` moves a tree of arrays; built once by `route_tree`, reused per call.

  Attributes:
    topology: hosts and slices of the devices.
    treedef: structure of the tree.
    shapes: shape of each leaf.
    dst_shardings: destination sharding of each leaf.
    units: per leaf, the blocks into each host.
    plan: the topology-aware byte plan (each host pulls from the holders: arity 0).
    naive_plan: every destination device pulls its own copy.
    bounds: `topology.lower_bounds` of the pieces.
  """

  topology: topology_lib.Topology
  treedef: Any
  shapes: tuple[tuple[int, ...], ...]
  dst_shardings: tuple[Any, ...]
  units: tuple[tuple[_Unit, ...], ...]
  plan: topology_lib.BroadcastPlan
  naive_plan: topology_lib.BroadcastPlan
  bounds: dict[str, int]


def _leaf_units(shape, src, dst, topology, turn) -> tuple[_Unit, ...]:
  src_blocks, dst_blocks = _blocks(src, shape), _blocks(dst, shape)
  host = topology.host_array()
  host_of = lambda d: int(host[topology.index(d)])  # noqa: E731
  full = tuple((0, n) for n in shape)
  units = []
  by_block: dict[Block, list] = {}
  for d, b in dst_blocks.items():
    by_block.setdefault(b, []).append(d)
  for b, wanters in by_block.items():
    exact = sorted((d for d, sb in src_blocks.items() if sb == b), key=topology.index)
    parts_on = {host_of(d) for d, sb in src_blocks.items() if _overlaps(sb, b)}
    hosts: dict[int, list] = {}
    for d in sorted(wanters, key=topology.index):
      hosts.setdefault(host_of(d), []).append(d)
    for h, devs in hosts.items():
      units += [_Unit(b, b == full, d, d, (), False) for d in devs if d in exact]  # Own copy.
      rest = [d for d in devs if d not in exact]
      near = [d for d in exact if host_of(d) == h]
      if rest and (near or (not exact and parts_on == {h})):
        # The block is on this host already: every device copies it over the host's links.
        units += [_Unit(b, b == full, near[0] if near else None, d, (), False) for d in rest]
      elif rest:
        source = exact[(h + turn) % len(exact)] if exact else None
        k = (h + turn) % len(rest)
        units.append(_Unit(b, b == full, source, rest[k], tuple(rest[:k] + rest[k + 1:]), True))
  return tuple(units)


def route_tree(tree: Any, dst_shardings: Any,
               topology: Optional[topology_lib.Topology] = None) -> Route:
  """Plans the replication of `tree` into `dst_shardings` within this process.

  Args:
    tree: arrays or `jax.ShapeDtypeStruct`s with their source `sharding`.
    dst_shardings: a matching tree of destination shardings (e.g. the actor's NamedShardings).
    topology: hosts of the devices; default `Topology.from_devices()` (hosts = processes).
      With fake CPU devices, `Topology.from_devices(devices_per_host=4)` pretends hosts.

  Returns:
    The route.

  Raises:
    ValueError: a source or destination device is not addressable from this process (use
      `broadcast_via_collective` across processes).
  """
  topology = topology or topology_lib.Topology.from_devices()
  leaves, treedef = jax.tree.flatten(tree)
  dsts = treedef.flatten_up_to(dst_shardings)
  for x, dst in zip(leaves, dsts):
    if not (x.sharding.is_fully_addressable and dst.is_fully_addressable):
      raise ValueError("route_tree moves arrays within one process; across processes use "
                       "broadcast_via_collective")
  units = tuple(_leaf_units(tuple(x.shape), x.sharding, dst, topology, i)
                for i, (x, dst) in enumerate(zip(leaves, dsts)))
  pieces = pieces_from_shardings(leaves, dsts, topology)
  return Route(topology=topology, treedef=treedef, shapes=tuple(tuple(x.shape) for x in leaves),
               dst_shardings=tuple(dsts), units=units,
               plan=topology_lib.plan_topology_aware(pieces, topology, arity=0),
               naive_plan=topology_lib.plan_naive(pieces, topology),
               bounds=topology_lib.lower_bounds(pieces, topology))


@functools.partial(jax.jit, static_argnums=1)
def _take(x, block: Block):
  return x[tuple(slice(a, b) for a, b in block)]


def _source(x, unit: _Unit, shards: dict):
  if unit.source is not None:
    return shards[unit.source]
  return x if unit.full else _take(x, unit.block)


def replicate(params: Any, route: Route, *, naive: bool = False, may_alias: bool = False) -> Any:
  """Copies `params` into the route's destination shardings, one copy per host then fan-out.

  Args:
    params: arrays laid out as when the route was built.
    route: from `route_tree`.
    naive: instead, every destination device pulls its own copy from the source.
    may_alias: let a destination device that already holds its block share the buffer (as
      `jax.device_put` does); off by default so the learner may donate its weights later.

  Returns:
    The tree with the destination shardings; values equal `params`.
  """
  leaves = route.treedef.flatten_up_to(params)
  # Stage 1 copies (leaf, device, source) and stage 2 copies (leaf, device, stage-1 copy).
  first, second = [], []
  for i, (x, units) in enumerate(zip(leaves, route.units)):
    shards = {s.device: s.data for s in x.addressable_shards}
    for unit in units:
      if naive:
        first += [(i, d, shards[d] if unit.source == d else _source(x, unit, shards))
                  for d in (unit.leader, *unit.fanout)]
        continue
      first.append((i, unit.leader, _source(x, unit, shards)))
      second += [(i, d, len(first) - 1) for d in unit.fanout]
  first_out = jax.device_put([src for _, _, src in first],
                             [SingleDeviceSharding(d) for _, d, _ in first], may_alias=may_alias)
  second_out = jax.device_put([first_out[k] for _, _, k in second],
                              [SingleDeviceSharding(d) for _, d, _ in second])
  buffers = [[] for _ in leaves]
  for (i, _, _), buf in zip(first + second, first_out + second_out):
    buffers[i].append(buf)
  out = [jax.make_array_from_single_device_arrays(shape, dst, bufs)
         for shape, dst, bufs in zip(route.shapes, route.dst_shardings, buffers)]
  return route.treedef.unflatten(out)


def bridge_mesh(learner_mesh: Mesh, actor_mesh: Mesh) -> Mesh:
  """A mesh over both planes: axis "plane" (0 learner, 1 actor) before the planes' axes.

  Raises:
    ValueError: the meshes differ in shape or axis names.
  """
  if (learner_mesh.axis_names != actor_mesh.axis_names or
      learner_mesh.devices.shape != actor_mesh.devices.shape):
    raise ValueError(f"bridge_mesh needs equally shaped meshes; got learner "
                     f"{dict(learner_mesh.shape)} and actor {dict(actor_mesh.shape)}")
  return Mesh(np.stack([learner_mesh.devices, actor_mesh.devices]),
              ("plane", *learner_mesh.axis_names))


@functools.lru_cache(maxsize=64)
def _zeros_fn(actor_mesh: Mesh, avals: tuple):
  shardings = [NamedSharding(actor_mesh, spec) for _, _, spec in avals]
  return jax.jit(lambda: [jnp.zeros(s, d) for s, d, _ in avals], out_shardings=shardings)


@functools.lru_cache(maxsize=64)
def _permute_fn(bridge: Mesh, specs: tuple):

  def body(blocks):
    # Learner row keeps its blocks; the actor row takes the block from the same position.
    is_learner = jax.lax.axis_index("plane") == 0
    return [jnp.where(is_learner, b, jax.lax.ppermute(b, "plane", perm=[(0, 1)]))
            for b in blocks]

  return jax.jit(jax.shard_map(body, mesh=bridge, in_specs=(list(specs),),
                               out_specs=list(specs), check_vma=False))


def broadcast_via_collective(params: Any, learner_mesh: Mesh, actor_mesh: Mesh,
                             dst_shardings: Any = None) -> Any:
  """Learner weights onto the actor mesh by one collective over both planes (multi-process).

  Every process calls this with the same arguments. The arrays enter the bridge mesh without
  a copy (learner shards as they are, zeros on the actor row), are permuted learner ->
  actor, and leave as arrays on the actor mesh in the learner's layout, resharded to
  `dst_shardings` within the actor mesh when given.

  Args:
    params: arrays NamedSharded on `learner_mesh` (or `jax.ShapeDtypeStruct`s with such a
      sharding on a process that holds no learner device).
    learner_mesh: the learner's mesh.
    actor_mesh: the actor's mesh, of the same shape and axis names.
    dst_shardings: optional tree of NamedShardings on `actor_mesh`.

  Returns:
    The tree on the actor mesh; where this process holds no actor device, its arrays have no
    addressable shards.
  """
  bridge = bridge_mesh(learner_mesh, actor_mesh)
  leaves, treedef = jax.tree.flatten(params)
  specs = tuple(x.sharding.spec for x in leaves)
  avals = tuple((tuple(x.shape), np.dtype(x.dtype), s) for x, s in zip(leaves, specs))
  zeros = _zeros_fn(actor_mesh, avals)()
  inputs = []
  for x, z, spec in zip(leaves, zeros, specs):
    local = [s.data for s in getattr(x, "addressable_shards", ())]
    local += [s.data for s in z.addressable_shards]
    inputs.append(jax.make_array_from_single_device_arrays(
        x.shape, NamedSharding(bridge, spec), local, dtype=x.dtype))
  outputs = _permute_fn(bridge, specs)(inputs)
  actor_devices = set(actor_mesh.devices.flat)
  result = [jax.make_array_from_single_device_arrays(
      x.shape, NamedSharding(actor_mesh, spec),
      [s.data for s in y.addressable_shards if s.device in actor_devices], dtype=x.dtype)
            for x, y, spec in zip(leaves, outputs, specs)]
  result = treedef.unflatten(result)
  return result if dst_shardings is None else jax.device_put(result, dst_shardings)
