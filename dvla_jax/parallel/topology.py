"""Device topology (slices > hosts > devices) and weight-broadcast plans over it.

A plan moves *pieces* of the weights: a piece is a run of bytes that some devices hold (the
learner's shard of it) and other devices want (the actors' copy). A plan is a list of
transfers (piece, src device, dst device, bytes, step) with the link class each one uses:

  intra_host   between devices of one host (NVLink, ICI, shared memory)
  cross_host   between hosts of one slice (the network, DCN)
  cross_slice  between slices (the slowest links)

Two planners:
  `plan_topology_aware`: every piece enters each host that wants it and holds no copy exactly
    once, at a leader device of that host, then fans out over the host's own links. Across
    hosts the copies form a tree that enters each slice once, at an entry host, and then
    spreads inside each slice; a host has at most `arity` children in the tree across slices
    and `arity` inside its slice, so no host sends a piece more often than that over either
    kind of link (0: a star, every host pulls from a holder).
  `plan_naive`: every device that wants a piece pulls its own copy from a holder, preferring
    one on its own host, then its own slice.

Lower bound (`lower_bounds`): a host that wants a piece and holds no copy of it must receive
its bytes across its boundary at least once, so any plan moves at least
  host_boundary = sum over pieces of bytes * (hosts wanting it that hold no copy)
bytes over cross_host + cross_slice links, and likewise at least
  cross_slice = sum over pieces of bytes * (slices wanting it that hold no copy)
over cross_slice links. The topology-aware plan meets both exactly; the naive plan moves
bytes * (devices wanting it on hosts without a copy) across hosts, which is k times the bound
when each such host has k wanting devices. Both deliver every piece once to every device
that wants it and lacks it.

Planning touches no device, so a 512-host topology plans in well under a second.
"""

import collections
from collections.abc import Iterator, Sequence
import dataclasses
from typing import Any, NamedTuple, Optional

import numpy as np

LINK_CLASSES = ("intra_host", "cross_host", "cross_slice")
_INTRA, _CROSS_HOST, _CROSS_SLICE = range(3)


@dataclasses.dataclass(frozen=True, eq=False)
class Topology:
  """Devices numbered 0..n-1 in host order, each on a host, each host in a slice.

  Attributes:
    host_of: host of each device index (non-decreasing: devices are numbered host by host).
    slice_of_host: slice of each host.
    devices: the JAX devices behind the indices, when built from live devices.
  """

  host_of: tuple[int, ...]
  slice_of_host: tuple[int, ...]
  devices: Optional[tuple[Any, ...]] = None

  def __post_init__(self):
    hosts = np.asarray(self.host_of)
    if len(hosts) == 0 or np.any(np.diff(hosts) < 0) or hosts[-1] >= len(self.slice_of_host):
      raise ValueError("Topology.host_of must be non-decreasing host ids < len(slice_of_host)")
    object.__setattr__(self, "_host", hosts.astype(np.int32))
    object.__setattr__(self, "_slice", np.asarray(self.slice_of_host, np.int32)[hosts])
    if self.devices is not None:
      object.__setattr__(self, "_index", {d: i for i, d in enumerate(self.devices)})

  @classmethod
  def described(cls, hosts: int, devices_per_host: int, slices: int = 1) -> "Topology":
    """A uniform topology of `hosts` x `devices_per_host` devices, hosts split into `slices`."""
    if hosts < 1 or devices_per_host < 1 or slices < 1 or hosts % slices:
      raise ValueError(f"Topology.described(hosts={hosts}, devices_per_host={devices_per_host}, "
                       f"slices={slices}): need positive sizes and slices dividing hosts")
    return cls(host_of=tuple(np.repeat(np.arange(hosts), devices_per_host).tolist()),
               slice_of_host=tuple(np.repeat(np.arange(slices), hosts // slices).tolist()))

  @classmethod
  def from_devices(cls, devices: Optional[Sequence[Any]] = None,
                   devices_per_host: Optional[int] = None) -> "Topology":
    """The topology of live JAX devices.

    Args:
      devices: the devices (default `jax.devices()`).
      devices_per_host: pretend consecutive runs of this many devices (in the given order) are
        hosts, e.g. 8 fake CPU devices as 2 hosts x 4. Default: hosts are processes
        (`process_index`) and slices are `slice_index` where the platform has one.

    Returns:
      The topology, its indices numbering the devices host by host.
    """
    if devices is None:
      import jax  # Deferred: planning on described topologies needs no JAX backend.
      devices = jax.devices()
    devices = list(devices)
    if devices_per_host:
      if len(devices) % devices_per_host:
        raise ValueError(f"devices_per_host={devices_per_host} does not divide the "
                         f"{len(devices)} devices")
      keys = [(0, i // devices_per_host) for i in range(len(devices))]
    else:
      keys = [(getattr(d, "slice_index", 0) or 0, d.process_index) for d in devices]
    order = sorted(range(len(devices)), key=lambda i: (keys[i], i))
    host_ids = {k: h for h, k in enumerate(sorted(set(keys)))}
    slice_ids = {s: i for i, s in enumerate(sorted({k[0] for k in keys}))}
    return cls(host_of=tuple(host_ids[keys[i]] for i in order),
               slice_of_host=tuple(slice_ids[k[0]] for k in sorted(host_ids)),
               devices=tuple(devices[i] for i in order))

  @property
  def num_devices(self) -> int:
    return len(self.host_of)

  @property
  def num_hosts(self) -> int:
    return len(self.slice_of_host)

  @property
  def num_slices(self) -> int:
    return len(set(self.slice_of_host))

  def host_array(self) -> np.ndarray:
    """Host of every device index, as int32."""
    return self._host

  def slice_array(self) -> np.ndarray:
    """Slice of every device index, as int32."""
    return self._slice

  def index(self, device: Any) -> int:
    """The index of a live JAX device (topologies built by `from_devices` only)."""
    return self._index[device]

  def link_classes(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Link class (index into LINK_CLASSES) of transfers between device indices."""
    src, dst = np.asarray(src), np.asarray(dst)
    return np.where(self._slice[src] != self._slice[dst], _CROSS_SLICE,
                    np.where(self._host[src] != self._host[dst], _CROSS_HOST, _INTRA)
                    ).astype(np.int8)

  def __repr__(self) -> str:
    sizes = collections.Counter(self.host_of)
    per_host = sorted(set(sizes.values()))
    return (f"Topology({self.num_hosts} hosts x {'/'.join(map(str, per_host))} devices, "
            f"{self.num_slices} slices)")


class Piece(NamedTuple):
  """Bytes that `holders` have and `wanters` want (device indices of a topology)."""

  nbytes: int
  holders: tuple[int, ...]
  wanters: tuple[int, ...]


class Transfer(NamedTuple):
  """One copy: `nbytes` of piece `piece` from device `src` to device `dst` over `link`."""

  piece: int
  src: int
  dst: int
  nbytes: int
  step: int
  link: str


@dataclasses.dataclass(frozen=True, eq=False)
class BroadcastPlan:
  """A plan's transfers as columns, one row each (iterate for `Transfer`s).

  A transfer at step s reads only data that its source held from the start or received at a
  step before s, so the transfers of one step can run at once.
  """

  name: str
  topology: Topology
  piece: np.ndarray
  src: np.ndarray
  dst: np.ndarray
  nbytes: np.ndarray
  step: np.ndarray
  link: np.ndarray

  def __len__(self) -> int:
    return len(self.src)

  def __iter__(self) -> Iterator[Transfer]:
    for row in zip(self.piece.tolist(), self.src.tolist(), self.dst.tolist(),
                   self.nbytes.tolist(), self.step.tolist(), self.link.tolist()):
      yield Transfer(*row[:5], LINK_CLASSES[row[5]])

  def bytes_by_link(self) -> dict[str, int]:
    """Bytes moved over each link class."""
    sums = np.bincount(self.link, weights=self.nbytes, minlength=len(LINK_CLASSES))
    return {name: int(round(s)) for name, s in zip(LINK_CLASSES, sums)}

  @property
  def host_boundary_bytes(self) -> int:
    """Bytes that cross a host boundary (cross_host + cross_slice)."""
    return int(self.nbytes[self.link != _INTRA].sum())

  @property
  def num_steps(self) -> int:
    return int(self.step.max()) if len(self) else 0

  def max_host_egress_bytes(self, link: Optional[str] = None) -> int:
    """The most bytes any one host sends over links that leave it (or over class `link`)."""
    out = self.link != _INTRA if link is None else self.link == LINK_CLASSES.index(link)
    hosts = self.topology.host_array()[self.src[out]]
    return int(np.bincount(hosts, weights=self.nbytes[out]).max()) if out.any() else 0

  def summary(self) -> dict[str, Any]:
    """JSON-ready counters."""
    return dict(name=self.name, transfers=len(self), steps=self.num_steps,
                bytes_by_link=self.bytes_by_link(),
                host_boundary_bytes=self.host_boundary_bytes,
                max_host_egress_bytes=self.max_host_egress_bytes())


def split_layout(devices: Sequence[int], shards: int) -> list[tuple[int, ...]]:
  """Devices as `shards` equal shards, shard j on devices[j::shards] (shard axis minor).

  `split_layout(d, len(d))` is FSDP over `d`, `split_layout(d, 1)` replication over `d`.
  """
  if shards < 1 or len(devices) % shards:
    raise ValueError(f"{shards} shards do not divide {len(devices)} devices")
  return [tuple(devices[j::shards]) for j in range(shards)]


def pieces_between(total_bytes: int, src: Sequence[Sequence[int]],
                   dst: Sequence[Sequence[int]]) -> list[Piece]:
  """Pieces of a weight split into len(src) equal shards held and len(dst) shards wanted.

  Args:
    total_bytes: bytes of the weights.
    src: src[i] = devices holding the i-th of len(src) equal consecutive shards.
    dst: dst[j] = devices wanting the j-th of len(dst) equal consecutive shards.

  Returns:
    One piece per run of bytes that lies in a single source and a single destination shard.
  """
  cuts = sorted({i * total_bytes // len(src) for i in range(len(src) + 1)} |
                {j * total_bytes // len(dst) for j in range(len(dst) + 1)})
  pieces = []
  for lo, hi in zip(cuts[:-1], cuts[1:]):
    i, j = lo * len(src) // total_bytes, lo * len(dst) // total_bytes
    pieces.append(Piece(hi - lo, tuple(src[i]), tuple(dst[j])))
  return pieces


def merge_pieces(pieces: Sequence[Piece]) -> list[Piece]:
  """Pieces with the same holders and wanters combined into one (bytes summed)."""
  total: dict[tuple, int] = collections.defaultdict(int)
  for p in pieces:
    total[(p.holders, p.wanters)] += p.nbytes
  return [Piece(n, h, w) for (h, w), n in total.items()]


def lower_bounds(pieces: Sequence[Piece], topology: Topology) -> dict[str, int]:
  """Fewest bytes any plan moves: across host boundaries, across slices, and in total."""
  host, slc = topology.host_array(), topology.slice_array()
  bound = dict(host_boundary=0, cross_slice=0, delivered=0)
  for p in pieces:
    held = np.asarray(p.holders)
    want = np.setdiff1d(np.asarray(p.wanters), held)
    bound["host_boundary"] += p.nbytes * len(np.setdiff1d(host[want], host[held]))
    bound["cross_slice"] += p.nbytes * len(np.setdiff1d(slc[want], slc[held]))
    bound["delivered"] += p.nbytes * len(want)
  return bound


class _Rows:
  """Collects transfer columns piece by piece."""

  def __init__(self):
    self.cols = collections.defaultdict(list)

  def add(self, piece: int, src, dst, nbytes: int, step):
    dst = np.atleast_1d(np.asarray(dst, np.int32))
    for name, value in (("piece", piece), ("src", src), ("dst", dst), ("nbytes", nbytes),
                        ("step", step)):
      self.cols[name].append(np.broadcast_to(np.asarray(value), dst.shape))

  def plan(self, name: str, topology: Topology) -> BroadcastPlan:
    dtypes = dict(piece=np.int32, src=np.int32, dst=np.int32, nbytes=np.int64, step=np.int32)
    cols = {k: (np.concatenate(self.cols[k]).astype(t) if self.cols[k] else np.zeros(0, t))
            for k, t in dtypes.items()}
    links = topology.link_classes(cols["src"], cols["dst"])
    return BroadcastPlan(name, topology, link=links, **cols)


def _lacking(p: Piece) -> tuple[np.ndarray, np.ndarray]:
  if not p.holders:
    raise ValueError(f"a piece of {p.nbytes} bytes has no holder")
  held = np.unique(np.asarray(p.holders, np.int32))
  return held, np.setdiff1d(np.asarray(p.wanters, np.int32), held)


def plan_naive(pieces: Sequence[Piece], topology: Topology) -> BroadcastPlan:
  """Every wanting device pulls its own copy of each piece from a holder.

  The holder is one on the device's own host if any, else one in its slice, else holders in
  turn, so the plan uses locality that needs no coordination but never relays.
  """
  host, slc = topology.host_array(), topology.slice_array()
  rows = _Rows()
  for i, p in enumerate(pieces):
    held, want = _lacking(p)
    if not len(want):
      continue
    by_host = dict(zip(host[held][::-1].tolist(), held[::-1].tolist()))
    by_slice = dict(zip(slc[held][::-1].tolist(), held[::-1].tolist()))
    turn = held[(np.arange(len(want)) + i) % len(held)]
    src = np.array([by_host.get(h, by_slice.get(s, -1)) for h, s in
                    zip(host[want].tolist(), slc[want].tolist())], np.int32)
    rows.add(i, np.where(src >= 0, src, turn), want, p.nbytes, 1)
  return rows.plan("naive", topology)


def _tree(root_dev: np.ndarray, root_depth: np.ndarray, node_dev: np.ndarray,
          arity: int) -> tuple[np.ndarray, np.ndarray]:
  """(parent device, depth) of each node hung under roots, `arity` children each (0: star)."""
  r, m = len(root_dev), len(node_dev)
  devs = np.concatenate([root_dev, node_dev])
  depth = np.concatenate([root_depth, np.zeros(m, root_depth.dtype)])
  j = np.arange(m)
  parent = j // arity if arity else j % r
  if not arity:
    depth[r:] = root_depth[parent] + 1
  filled = r
  while arity and filled < r + m:  # Level by level: a node's parent is filled before it.
    js = np.arange(filled - r, min(m, filled * arity))
    depth[r + js] = depth[js // arity] + 1
    filled += len(js)
  return devs[parent], depth[r:]


def plan_topology_aware(pieces: Sequence[Piece], topology: Topology,
                        arity: int = 2) -> BroadcastPlan:
  """Each piece crosses into each wanting host (and slice) once, then fans out inside.

  Args:
    pieces: what moves (see `pieces_between`, `merge_pieces`).
    topology: the devices' hosts and slices.
    arity: children per host in the cross-host tree; 0 lets every host pull from a holder.

  Returns:
    The plan, meeting `lower_bounds` on host_boundary and cross_slice bytes.
  """
  host, slc = topology.host_array(), topology.slice_array()
  rows = _Rows()
  for i, p in enumerate(pieces):
    held, want = _lacking(p)
    if not len(want):
      continue
    # One source per holder host and one leader per wanting host, chosen in turn across
    # pieces so that sending and relaying spread over the devices of a host.
    holder_hosts, starts, counts = np.unique(host[held], return_index=True, return_counts=True)
    source = held[starts + i % counts]
    want_hosts, starts, counts = np.unique(host[want], return_index=True, return_counts=True)
    leader = want[starts + i % counts]
    group = np.repeat(np.arange(len(want_hosts)), counts)
    has_copy = np.isin(want_hosts, holder_hosts)
    local = has_copy[group]
    if local.any():  # Hosts holding a copy serve their own devices.
      rows.add(i, source[np.searchsorted(holder_hosts, host[want[local]])], want[local],
               p.nbytes, 1)
    need = np.flatnonzero(~has_copy)
    if not len(need):
      continue
    need = np.roll(need, -(i % len(need)))
    parents, children, depths = [], [], []

    def hang(root_dev, root_depth, node_dev):
      par, dep = _tree(root_dev, root_depth, node_dev, arity)
      parents.append(par), children.append(node_dev), depths.append(dep)
      return dep

    # A slice without a copy is entered once, at its first needing host; the others in the
    # slice hang below that entry (or below the slice's holders).
    need_slices = slc[leader[need]]
    held_slices = np.unique(slc[held])
    order = [s for s in dict.fromkeys(need_slices.tolist())]
    entry_of = {s: leader[need[need_slices == s][0]] for s in order if s not in held_slices}
    entry_depth = {}
    if entry_of:
      entries = np.array(list(entry_of.values()), np.int32)
      dep = hang(source, np.zeros(len(source), np.int32), entries)
      entry_depth = dict(zip(entry_of, dep.tolist()))
    for s in order:
      nodes = leader[need[need_slices == s]]
      if s in entry_depth:
        hang(nodes[:1], np.array([entry_depth[s]], np.int32), nodes[1:])
      else:
        roots = source[slc[source] == s]
        hang(roots, np.zeros(len(roots), np.int32), nodes)
    parents, children, depths = map(np.concatenate, (parents, children, depths))
    rows.add(i, parents, children, p.nbytes, depths)
    host_depth = np.zeros(len(want_hosts), np.int32)
    host_depth[np.searchsorted(want_hosts, host[children])] = depths
    fan = ~local & (want != leader[group])
    if fan.any():
      rows.add(i, leader[group[fan]], want[fan], p.nbytes, host_depth[group[fan]] + 1)
  return rows.plan(f"topology_aware(arity={arity})", topology)


def validate_plan(plan: BroadcastPlan, pieces: Sequence[Piece]) -> None:
  """Checks that a plan delivers every piece once to each device lacking it, in causal order.

  Raises:
    AssertionError: a transfer reads data its source lacks at that step, a device receives a
      piece twice or without wanting it, a size is wrong, or a wanting device never gets it.
  """
  n = plan.topology.num_devices
  sizes = np.array([p.nbytes for p in pieces], np.int64)
  assert np.array_equal(plan.nbytes, sizes[plan.piece]), "a transfer has the wrong size"
  # Keys piece * n + device; a device has a piece from step 0 (holder) or its arrival step.
  held = np.concatenate([i * n + np.unique(np.asarray(p.holders, np.int64))
                         for i, p in enumerate(pieces)])
  wanted = np.concatenate([i * n + np.unique(np.asarray(p.wanters, np.int64))
                           for i, p in enumerate(pieces)])
  got = plan.piece.astype(np.int64) * n + plan.dst
  assert len(np.unique(got)) == len(got), "a device receives a piece twice"
  assert not np.isin(got, held).any(), "a device receives a piece it already holds"
  assert np.array_equal(np.sort(got), np.setdiff1d(wanted, held)), (
      "the plan's deliveries differ from the devices that want and lack each piece")
  keys = np.concatenate([held, got])
  steps = np.concatenate([np.zeros(len(held), np.int64), plan.step])
  order = np.argsort(keys)
  keys, steps = keys[order], steps[order]
  reads = plan.piece.astype(np.int64) * n + plan.src
  pos = np.minimum(np.searchsorted(keys, reads), len(keys) - 1)
  ok = (keys[pos] == reads) & (steps[pos] < plan.step)
  assert ok.all(), f"{int((~ok).sum())} transfers read a piece their source lacks at that step"
