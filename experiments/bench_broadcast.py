r"""Weight broadcast learner -> actors: topology-aware vs naive vs a plain copy (the bound).

    PYTHONPATH=. python experiments/bench_broadcast.py --out=/tmp/bcast.json [--quick] \
        [--multiprocess]

One process, 8 fake CPU devices pretended to be 2 hosts x 4: the learner holds the weights
FSDP-sharded over host 0's four devices and the four actor devices of host 1 want a
replicated copy. For each weight size (a tree of float32 arrays; 10 MB to 1 GB, quick:
10 MB to 100 MB) it times, in alternating rounds (the machine is shared and noisy):

  topology_aware  `replicate`: one copy into the actor host, then fan-out inside it
  naive           `replicate(naive=True)`: every actor device pulls its own copy
  device_put      `jax.device_put(params, actor_shardings)`, what JAX does by itself
  copy_bound      one device-to-device copy of the same bytes (all weights on one learner
                  device -> one actor device): no broadcast can deliver the bytes faster

and reports median seconds, each time over copy_bound, and the bytes per link class of both
plans with the lower bound. On CPU every "link" is the same memory, so the times show the
executor's overhead; the byte counts show what the plans save on a real network.

`--multiprocess` also starts 2 processes on localhost (`jax.distributed.initialize`, gloo
CPU collectives, 4 fake devices each: process 0 is the learner host, process 1 the actor
host) and times `broadcast_via_collective` learner -> actor, with and without the reshard to
a replicated copy on the actor mesh. Children that hang are killed with SIGKILL after
`--timeout` seconds. Without it the JSON's "multiprocess" field is null.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

MB = 10 ** 6
_LEAVES = 8  # arrays per weight tree, like a model's layers


def _parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", help="JSON file to write (required unless --_worker)")
  parser.add_argument("--quick", action="store_true", help="reduced run (< 3 min on CPU)")
  parser.add_argument("--multiprocess", action="store_true", help="also time 2 processes")
  parser.add_argument("--sizes_mb", default="", help="comma-separated sizes (default by mode)")
  parser.add_argument("--repeats", type=int, default=0, help="timed rounds (0: by mode)")
  parser.add_argument("--timeout", type=float, default=150.0, help="2-process limit, seconds")
  parser.add_argument("--_worker", type=int, default=-1, help=argparse.SUPPRESS)
  parser.add_argument("--_port", type=int, default=0, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args._worker < 0 and not args.out:
    parser.error("--out is required")
  default = "10,30,100" if args.quick else "10,100,300,1000"
  args.sizes = [float(s) for s in (args.sizes_mb or default).split(",")]
  args.repeats = args.repeats or (3 if args.quick else 5)
  return args


def _setup_jax(devices: int, worker: int = -1, port: int = 0):
  # Must happen before JAX initialises a backend.
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax
  jax.config.update("jax_num_cpu_devices", devices)
  if worker >= 0:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=worker)
  return jax


def _model_meshes(learner_devices, actor_devices):
  from jax.sharding import Mesh
  import numpy as np
  axes = ("data", "fsdp", "tensor")
  return (Mesh(np.array(learner_devices).reshape(1, -1, 1), axes),
          Mesh(np.array(actor_devices).reshape(1, -1, 1), axes))


def _weights(jax, size_mb: float, mesh, local: bool = True):
  """A tree of float32 arrays of `size_mb` in all, FSDP-sharded over `mesh` (axis 0)."""
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec
  import numpy as np
  sharding = NamedSharding(mesh, PartitionSpec("fsdp"))
  rows = max(mesh.shape["fsdp"], int(size_mb * MB / 4 / 1024 / _LEAVES) // 8 * 8)
  shape = (rows, 1024)
  if not local:
    return [jax.ShapeDtypeStruct(shape, np.float32, sharding=sharding)] * _LEAVES
  make = jax.jit(lambda i: jax.numpy.full(shape, i, np.float32) +
                 jax.numpy.arange(shape[1], dtype=np.float32), out_shardings=sharding)
  return [make(i) for i in range(_LEAVES)]


def _time(fn) -> float:
  """Seconds of one call, until its outputs are ready."""
  import jax
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def _single_process(args) -> dict:
  jax = _setup_jax(8)
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec
  from jax.sharding import SingleDeviceSharding
  import numpy as np

  from dvla_jax.parallel import broadcast
  from dvla_jax.parallel import topology

  devices = jax.devices()
  topo = topology.Topology.from_devices(devices, devices_per_host=4)
  learner, actor = _model_meshes(devices[:4], devices[4:])
  results = []
  for size in args.sizes:
    params = _weights(jax, size, learner)
    dst = [NamedSharding(actor, PartitionSpec())] * len(params)
    route = broadcast.route_tree(params, dst, topo)
    one_device = jax.device_put(params, SingleDeviceSharding(devices[0]))
    methods = {
        "topology_aware": lambda: broadcast.replicate(params, route),
        "naive": lambda: broadcast.replicate(params, route, naive=True),
        "device_put": lambda: jax.device_put(params, dst),
        "copy_bound": lambda: jax.device_put(one_device, SingleDeviceSharding(devices[4]),
                                             may_alias=False),
    }
    out = broadcast.replicate(params, route)
    ok = all(np.array_equal(np.asarray(a), np.asarray(b))
             for a, b in zip(out, jax.device_put(params, dst)))
    del out
    for fn in methods.values():  # Warm-up: compiles and first-touch allocations.
      _time(fn)
    times = {name: [] for name in methods}
    for _ in range(args.repeats):  # Rounds alternate methods so that noise hits all alike.
      for name, fn in methods.items():
        times[name].append(_time(fn))
    median = {k: statistics.median(v) for k, v in times.items()}
    nbytes = sum(x.size * x.dtype.itemsize for x in params)
    results.append(dict(
        weight_bytes=int(nbytes), equal_to_device_put=bool(ok), seconds=median,
        seconds_all=times,
        over_copy_bound={k: v / median["copy_bound"] for k, v in median.items()},
        naive_over_topology_aware=median["naive"] / median["topology_aware"],
        plan=route.plan.summary(), naive_plan=route.naive_plan.summary(),
        lower_bounds=route.bounds))
    print(f"{nbytes / MB:8.1f} MB  aware {median['topology_aware']:.4f}s  naive "
          f"{median['naive']:.4f}s  device_put {median['device_put']:.4f}s  copy "
          f"{median['copy_bound']:.4f}s  cross-host bytes aware/naive "
          f"{route.plan.host_boundary_bytes}/{route.naive_plan.host_boundary_bytes}",
          flush=True)
    del params, one_device, route
  return dict(devices=8, topology=repr(topo), learner="host 0: 4 devices, FSDP",
              actor="host 1: 4 devices, replicated", sizes=results)


def _worker(args) -> None:
  jax = _setup_jax(4, args._worker, args._port)
  from jax.experimental import multihost_utils
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec

  from dvla_jax.parallel import broadcast

  devices = jax.devices()
  learner, actor = _model_meshes([d for d in devices if d.process_index == 0],
                                 [d for d in devices if d.process_index == 1])
  results = []
  for size in args.sizes:
    params = _weights(jax, size, learner, local=args._worker == 0)
    dst = [NamedSharding(actor, PartitionSpec())] * len(params)
    timed = {}
    for name, target in (("same_layout", None), ("replicated", dst)):
      fn = lambda: broadcast.broadcast_via_collective(params, learner, actor, target)  # noqa: B023
      times = []
      for _ in range(args.repeats + 1):  # The first round compiles: not counted.
        multihost_utils.sync_global_devices(f"{size}-{name}")
        times.append(_time(fn))
      timed[name] = statistics.median(times[1:])
    out = broadcast.broadcast_via_collective(params, learner, actor, dst)
    ok = all(float(s.data[1, 5]) == 5.0 + i for i, x in enumerate(out)
             for s in x.addressable_shards)
    nbytes = sum(x.size * 4 for x in params)
    results.append(dict(weight_bytes=int(nbytes), seconds=timed, values_ok=ok))
    del params, out
  if args._worker == 1:
    print("RESULT " + json.dumps(results), flush=True)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _multiprocess(args) -> dict:
  port = _free_port()
  base = [sys.executable, os.path.abspath(__file__), f"--_port={port}",
          f"--sizes_mb={','.join(map(str, args.sizes))}", f"--repeats={args.repeats}"]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
  children = [subprocess.Popen(base + [f"--_worker={i}"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env)
              for i in range(2)]
  deadline = time.monotonic() + args.timeout
  logs = []
  try:
    for child in children:
      logs.append(child.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
  except subprocess.TimeoutExpired:
    logs.append("timed out")
  finally:
    for child in children:
      if child.poll() is None:
        child.kill()  # SIGKILL: a process stuck in a collective ignores gentler signals.
        child.wait()
  result = [line[len("RESULT "):] for line in "\n".join(logs).splitlines()
            if line.startswith("RESULT ")]
  if not result or any(c.returncode for c in children):
    tail = "\n".join(logs)[-3000:]
    return dict(error=f"2-process run failed (exit codes "
                      f"{[c.returncode for c in children]})", log_tail=tail)
  return dict(processes=2, devices_per_process=4, collectives="gloo",
              learner="process 0: 4 devices, FSDP", actor="process 1: 4 devices",
              sizes=json.loads(result[0]))


def main(argv=None):
  args = _parse_args(sys.argv[1:] if argv is None else argv)
  if args._worker >= 0:
    _worker(args)
    return
  start = time.perf_counter()
  report = dict(quick=args.quick, repeats=args.repeats, single_process=_single_process(args),
                multiprocess=None)
  if args.multiprocess:
    report["multiprocess"] = _multiprocess(args)
    print(json.dumps(report["multiprocess"], indent=1)[:2000], flush=True)
  report["wall_seconds"] = time.perf_counter() - start
  with open(args.out, "w") as f:
    json.dump(report, f, indent=1)
  print(f"wrote {args.out} in {report['wall_seconds']:.0f}s")


if __name__ == "__main__":
  main()
