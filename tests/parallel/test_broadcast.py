"""Topology-aware weight replication: byte plans on described topologies, and the executors.

Planner tests are pure (no device is touched, so 512 hosts x 8 devices is cheap). The
executor tests run in one subprocess with 8 fake CPU devices, pretended to be hosts, and
compare every result with a plain `jax.device_put`.
"""

import collections
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from dvla_jax.parallel import topology as tp

GB = 10 ** 9


def _layouts(hosts: int, k: int):
  """(name, source parts, destination parts, destination devices per needing host)."""
  n = hosts * k
  if hosts == 1:
    learner, actor = list(range(k // 2)), list(range(k // 2, k))
  else:  # Learner on the first hosts (at most 8: keeps the 512-host plans small).
    learner_hosts = min(hosts // 2, 8)
    learner, actor = list(range(learner_hosts * k)), list(range(learner_hosts * k, n))
  coloc = list(range(min(n, 64)))
  return [
      ("fsdp_to_replicated", tp.split_layout(learner, len(learner)), tp.split_layout(actor, 1),
       k),
      ("fsdp_to_tp2", tp.split_layout(learner, len(learner)), tp.split_layout(actor, 2),
       k // 2),
      ("colocated_fsdp_to_all", tp.split_layout(coloc, len(coloc)),
       tp.split_layout(list(range(n)), 1), k),
  ]


@pytest.mark.parametrize("hosts,k", [(1, 8), (2, 8), (16, 8), (512, 8)])
def test_cross_host_bytes_meet_the_bound_and_naive_is_k_times(hosts, k):
  topo = tp.Topology.described(hosts=hosts, devices_per_host=k)
  for name, src, dst, wanting in _layouts(hosts, k):
    pieces = tp.pieces_between(GB, src, dst)
    bound = tp.lower_bounds(pieces, topo)
    aware = tp.plan_topology_aware(pieces, topo)
    naive = tp.plan_naive(pieces, topo)
    tp.validate_plan(aware, pieces)
    tp.validate_plan(naive, pieces)
    assert aware.host_boundary_bytes == bound["host_boundary"], name
    assert naive.host_boundary_bytes == wanting * bound["host_boundary"], name
    # Both deliver each piece once per device lacking it; only the links differ.
    assert int(aware.nbytes.sum()) == int(naive.nbytes.sum()) == bound["delivered"], name
  # The bound itself, by hand: every needing host receives all weight bytes once.
  pieces = tp.pieces_between(GB, _layouts(hosts, k)[0][1], _layouts(hosts, k)[0][2])
  need_hosts = 0 if hosts == 1 else hosts - min(hosts // 2, 8)
  assert tp.lower_bounds(pieces, topo)["host_boundary"] == need_hosts * GB


def test_colocated_bound_counts_hosts_that_hold_part_of_the_weights():
  # 2 hosts x 8, learner FSDP over all 16, actors replicated on all 16: each host holds half
  # the bytes, so the other half (GB / 2 per host) must enter it.
  topo = tp.Topology.described(hosts=2, devices_per_host=8)
  pieces = tp.pieces_between(GB, tp.split_layout(range(16), 16), tp.split_layout(range(16), 1))
  aware = tp.plan_topology_aware(pieces, topo)
  assert aware.bytes_by_link()["cross_host"] == GB
  assert tp.plan_naive(pieces, topo).bytes_by_link()["cross_host"] == 8 * GB


def test_slices_are_entered_once_and_the_tree_spreads_sending():
  topo = tp.Topology.described(hosts=16, devices_per_host=8, slices=4)
  learner, actor = list(range(8)), list(range(8, 128))  # Learner: host 0 of slice 0.
  pieces = tp.pieces_between(GB, tp.split_layout(learner, 8), tp.split_layout(actor, 1))
  bound = tp.lower_bounds(pieces, topo)
  assert bound["cross_slice"] == 3 * GB and bound["host_boundary"] == 15 * GB
  for arity in (0, 2, 3):
    plan = tp.plan_topology_aware(pieces, topo, arity=arity)
    tp.validate_plan(plan, pieces)
    assert plan.bytes_by_link()["cross_slice"] == 3 * GB, arity
    assert plan.host_boundary_bytes == 15 * GB, arity
  # With a binary tree no host sends more than 2 copies of anything across slices, nor 2 within
  # its slice; naive sends one per device from host 0.
  tree = tp.plan_topology_aware(pieces, topo, arity=2)
  assert tree.max_host_egress_bytes("cross_slice") <= 2 * GB
  assert tree.max_host_egress_bytes("cross_host") <= 2 * GB
  assert tp.plan_naive(pieces, topo).max_host_egress_bytes() == 120 * GB


def test_large_topology_tree_bounds_sender_load():
  topo = tp.Topology.described(hosts=512, devices_per_host=8)
  pieces = tp.pieces_between(GB, tp.split_layout(range(8), 8), tp.split_layout(range(4096), 1))
  aware = tp.plan_topology_aware(pieces, topo, arity=2)
  assert aware.host_boundary_bytes == 511 * GB
  assert aware.max_host_egress_bytes() <= 2 * GB
  assert aware.num_steps == 10  # 9 tree levels below host 0, then the fan-out inside hosts.


def test_validate_plan_rejects_broken_plans():
  topo = tp.Topology.described(hosts=4, devices_per_host=2)
  pieces = tp.pieces_between(800, tp.split_layout([0, 1], 2), tp.split_layout(range(2, 8), 1))
  plan = tp.plan_topology_aware(pieces, topo, arity=1)
  tp.validate_plan(plan, pieces)

  def broken(**cols):
    fields = dict(piece=plan.piece, src=plan.src, dst=plan.dst, nbytes=plan.nbytes,
                  step=plan.step, link=plan.link)
    fields.update(cols)
    return tp.BroadcastPlan("broken", topo, **fields)

  keep = np.arange(len(plan)) != 0
  with pytest.raises(AssertionError):  # A delivery missing.
    tp.validate_plan(broken(**{k: getattr(plan, k)[keep] for k in
                               ("piece", "src", "dst", "nbytes", "step", "link")}), pieces)
  with pytest.raises(AssertionError):  # Relays forwarding before they receive.
    tp.validate_plan(broken(step=np.ones_like(plan.step)), pieces)
  with pytest.raises(AssertionError):  # Wrong sizes.
    tp.validate_plan(broken(nbytes=plan.nbytes // 2), pieces)


def test_pieces_between_uneven_splits():
  pieces = tp.pieces_between(600, [(0,), (1,), (2,)], [(3, 4), (5, 6)])
  assert [p.nbytes for p in pieces] == [200, 100, 100, 200]
  assert [p.holders for p in pieces] == [(0,), (1,), (1,), (2,)]
  assert [p.wanters for p in pieces] == [(3, 4), (3, 4), (5, 6), (5, 6)]
  merged = tp.merge_pieces(pieces + [tp.Piece(50, (0,), (3, 4))])
  assert sorted(p.nbytes for p in merged) == [100, 100, 200, 250]


def test_topology_from_devices_groups_by_slice_and_process():
  dev = collections.namedtuple("dev", "id process_index slice_index")
  devices = [dev(i, i // 2 % 2, i // 4) for i in range(8)][::-1]  # 2 slices x 2 hosts x 2.
  topo = tp.Topology.from_devices(devices)
  assert (topo.num_hosts, topo.num_slices, topo.num_devices) == (4, 2, 8)
  assert [d.id for d in topo.devices] == [1, 0, 3, 2, 5, 4, 7, 6]
  assert topo.host_of == (0, 0, 1, 1, 2, 2, 3, 3)
  assert topo.slice_of_host == (0, 0, 1, 1)
  assert list(topo.link_classes([0, 0, 0], [1, 2, 4])) == [0, 1, 2]
  fake = tp.Topology.from_devices(devices, devices_per_host=4)
  assert fake.host_of == (0,) * 4 + (1,) * 4 and fake.index(devices[0]) == 0


_SCRIPT = textwrap.dedent("""
    import json
    import jax
    jax.config.update("jax_num_cpu_devices", 8)
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from dvla_jax.parallel import broadcast, topology

    devs = jax.devices()
    axes = ("data", "fsdp", "tensor")
    learner = Mesh(np.array(devs[:4]).reshape(1, 4, 1), axes)
    topo = topology.Topology.from_devices(devs, devices_per_host=2)  # 4 hosts x 2.
    rs = np.random.default_rng(0)
    params = {"w": rs.normal(size=(8, 8)).astype(np.float32),
              "b": rs.normal(size=(6,)).astype(np.float32),
              "step": np.int32(7), "tok": np.arange(32, dtype=np.int32).reshape(4, 8)}
    src = {"w": P("fsdp"), "b": P(), "step": P(), "tok": P(None, "fsdp")}
    params = jax.device_put(params, {k: NamedSharding(learner, s) for k, s in src.items()})
    out = {}

    def same(got, want):
      return all(a.sharding == b.sharding and np.array_equal(np.asarray(a), np.asarray(b))
                 for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))

    targets = {
        # Actors on hosts 2-3 (devices 4-7): replicated, and TP 2 x data 2.
        "replicated": {k: NamedSharding(Mesh(np.array(devs[4:]).reshape(1, 4, 1), axes), P())
                       for k in src},
        "tp": {k: NamedSharding(Mesh(np.array(devs[4:]).reshape(2, 1, 2), axes), s) for k, s in
               {"w": P(None, "tensor"), "b": P("tensor"), "step": P(), "tok": P("data")}.items()},
        # Colocated: actors on the learner's own devices, replicated.
        "colocated": {k: NamedSharding(learner, P()) for k in src},
    }
    for name, dst in targets.items():
      route = broadcast.route_tree(params, dst, topo)
      want = jax.device_put(params, dst)
      pieces = broadcast.pieces_from_shardings(params, dst, topo)
      topology.validate_plan(route.plan, pieces)
      into_hosts = [(i, str(u.block), int(topo.host_array()[topo.index(u.leader)]))
                    for i, leaf in enumerate(route.units) for u in leaf if u.crosses]
      out[name] = dict(
          aware=same(broadcast.replicate(params, route), want),
          naive=same(broadcast.replicate(params, route, naive=True), want),
          plan_cross=route.plan.host_boundary_bytes,
          naive_cross=route.naive_plan.host_boundary_bytes,
          bound=route.bounds["host_boundary"],
          copies_into_hosts=len(into_hosts),
          one_copy_per_block_and_host=len(into_hosts) == len(set(into_hosts)))

    # Aliasing: a device that already holds its block shares the buffer only when asked.
    dst = targets["colocated"]
    route = broadcast.route_tree(params, dst, topo)
    ptr = lambda t: {s.device: s.data.unsafe_buffer_pointer() for s in t["b"].addressable_shards}
    out["copies_by_default"] = not set(ptr(broadcast.replicate(params, route)).values()) & set(
        ptr(params).values())
    out["aliases_when_asked"] = ptr(broadcast.replicate(params, route, may_alias=True)) == ptr(
        params)

    actor = Mesh(np.array(devs[4:]).reshape(1, 4, 1), axes)
    for name, spec in (("collective_replicated", P()), ("collective_tp", P(None, "fsdp"))):
      dst = {"w": NamedSharding(actor, spec), "b": NamedSharding(actor, P()),
             "step": NamedSharding(actor, P()), "tok": NamedSharding(actor, P("fsdp"))}
      got = broadcast.broadcast_via_collective(params, learner, actor, dst)
      out[name] = same(got, jax.device_put(params, dst))
    same_layout = broadcast.broadcast_via_collective(params, learner, actor)
    out["collective_same_layout"] = all(
        a.sharding.spec == b.sharding.spec and a.sharding.mesh == actor and
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(same_layout), jax.tree.leaves(params)))
    try:
      broadcast.bridge_mesh(learner, Mesh(np.array(devs[4:6]).reshape(1, 2, 1), axes))
      out["bridge_rejects_unequal"] = False
    except ValueError:
      out["bridge_rejects_unequal"] = True
    print("RESULT " + json.dumps(out))
""")


@pytest.fixture(scope="module")
def executor_results():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
  proc = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True,
                        text=True, timeout=240)
  lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
  assert proc.returncode == 0 and lines, proc.stderr[-3000:]
  return json.loads(lines[0][len("RESULT "):])


@pytest.mark.parametrize("target", ["replicated", "tp", "colocated"])
def test_replicate_equals_device_put(executor_results, target):
  r = executor_results[target]
  assert r["aware"] and r["naive"]
  assert r["one_copy_per_block_and_host"]
  assert r["plan_cross"] == r["bound"]
  # Per leaf, (blocks a host wants) x (hosts lacking them): replicated: 4 leaves x 2 hosts;
  # tp: w and b 2 tensor blocks x 2 hosts, step and tok 1 block x 2 hosts; colocated: w and
  # tok are split over both learner hosts, b and step are on every device already.
  assert r["copies_into_hosts"] == {"replicated": 4 * 2, "tp": 2 * 2 * 2 + 2 * 1 * 2,
                                    "colocated": 2 * 2}[target]


def test_replicate_cross_host_bytes(executor_results):
  # w (8x8 f32, 256 B) + b (6 f32, 24 B) + step (4 B) + tok (4x8 i32, 128 B) = 412 B into
  # each of the two actor hosts; naive pulls once per actor device (2 per host).
  r = executor_results["replicated"]
  assert r["bound"] == 2 * 412 and r["naive_cross"] == 2 * 2 * 412
  # Colocated: each of the two learner hosts holds half of w and tok and all of b and step.
  assert executor_results["colocated"]["bound"] == 2 * (256 + 128) // 2


def test_replicate_aliasing(executor_results):
  assert executor_results["copies_by_default"]
  assert executor_results["aliases_when_asked"]


def test_broadcast_via_collective(executor_results):
  assert executor_results["collective_replicated"]
  assert executor_results["collective_tp"]
  assert executor_results["collective_same_layout"]
  assert executor_results["bridge_rejects_unequal"]
