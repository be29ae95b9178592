r"""Async swimlanes vs the synchronous baseline, in one process on an identical config.

    python experiments/bench_pipeline.py --out=/tmp/pipe.json [--quick] [--devices=8]
    python experiments/bench_pipeline.py --sample_efficiency --out=/tmp/eff.json

Throughput mode (default): builds the components once, so both pipelines run the very same
compiled programs, then alternates sync and async runs of the same number of iterations
(rounds: sync, async, sync, async, ...; the first iterations of each run are warm-up and not
timed). It reports env steps per second of each, their ratio, and the bound the measured lane
times allow on the devices present:

    lane time per iteration  L_i = busy seconds of lane i in the timed sync iterations / their
                                   number (sampling, inference, gradient, distribution)
    bound_speedup            = sum_i L_i / max(max_i L_i, sum_i L_i / usable_cores)

i.e. a perfect async pipeline runs every lane at once but can neither beat its slowest lane
nor use more cores than exist (`--cores`, default the CPU count of this machine when
computing on CPU). Every XLA:CPU computation is made single-threaded (same flags for sync and
async), so one lane occupies one core and lanes genuinely run side by side.

Writes FILE.json with sync_env_steps_per_s, async_env_steps_per_s, speedup, bound_speedup,
lane_busy (per pipeline), lane_s_per_iteration, and next to it the two traces and timelines
(FILE_sync_timeline.png, FILE_async_timeline.png).

Sample-efficiency mode (`--sample_efficiency`, slow): trains sync and async with
rl.max_staleness 1 and 2, three seeds each, and plots rollout success rate against env steps
(FILE.png); the JSON holds the curves and the final success rates.
"""

import argparse
import json
import os
import sys
import threading
import time

_SINGLE_THREAD_FLAGS = "--xla_cpu_multi_thread_eigen=false"


def _parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True, help="JSON file to write")
  parser.add_argument("--quick", action="store_true", help="reduced run (< 5 min on CPU)")
  parser.add_argument("--sample_efficiency", action="store_true",
                      help="train sync vs async (max_staleness 1, 2) x 3 seeds instead")
  parser.add_argument("--devices", type=int, default=8, help="fake CPU devices")
  parser.add_argument("--cores", type=int, default=0, help="usable cores (0: os.cpu_count)")
  parser.add_argument("--rounds", type=int, default=0, help="sync/async rounds (0: default)")
  parser.add_argument("--iterations", type=int, default=0, help="timed iterations per run")
  parser.add_argument("--warmup", type=int, default=2, help="untimed iterations per run")
  parser.add_argument("--set", action="append", default=[],
                      help="config override, e.g. --set=env.num_envs=32 (repeatable)")
  return parser.parse_args(argv)


def _setup_jax(devices: int) -> None:
  # Must happen before JAX initialises a backend.
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  flags = os.environ.get("XLA_FLAGS", "")
  if _SINGLE_THREAD_FLAGS not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} {_SINGLE_THREAD_FLAGS}".strip()
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_num_cpu_devices", devices)


def bench_config(quick: bool, overrides=()):
  """The benchmark's run config: 2 env groups on 2 sim devices, actor and learner 1 each."""
  from dvla_jax.training import default_config  # pylint: disable=g-import-not-at-top
  config = default_config.get_config()
  config.pipeline = "async"
  config.env.num_envs = 32
  config.env.episode_length = 16
  config.model.preset = "small"
  config.rl.rollout_length = 8
  config.rl.update_epochs = 2
  config.rl.num_minibatches = 2
  config.rl.decoupled = "on"  # The same update program in both pipelines.
  config.swimlanes.env_groups = 2
  config.swimlanes.num_slots = 3
  config.placement.mode = "disaggregated"
  config.placement.sim.devices = 2
  config.train.eval_every = 10**6
  config.train.checkpoint_every = 10**6
  for item in overrides:
    path, value = item.split("=", 1)
    *groups, field = path.split(".")
    node = config
    for g in groups:
      node = node[g]
    node[field] = type(node[field])(value) if not isinstance(node[field], bool) else (
        value.lower() in ("1", "true"))
  return config


def _lane_seconds(tracer, t_from: float, t_to: float) -> dict[str, float]:
  """Busy seconds per lane inside [t_from, t_to] (spans clipped to the window)."""
  busy = {}
  for s in tracer.spans:
    if s.kind != "busy":
      continue
    overlap = min(s.end, t_to) - max(s.start, t_from)
    if overlap > 0:
      busy[s.lane] = busy.get(s.lane, 0.0) + overlap
  return busy


def _run_pipeline(kind, comp, placement, state, start, iterations, warmup, rng, cores):
  """Runs `iterations` updates with pipeline class `kind`; returns timing and the new state."""
  from dvla_jax.swimlanes import tracing  # pylint: disable=g-import-not-at-top
  tracer = tracing.Tracer(True, 10**6)
  pipe = kind(comp, placement, tracer, rng)
  marks = {}

  def on_update(iteration, _state, _metrics):
    marks[iteration] = time.perf_counter()

  total = start + warmup + iterations
  state, done = pipe.run(state, start, total, on_update, threading.Event())
  t_from, t_to = marks[start + warmup], marks[total]
  steps = iterations * comp.config.rl.rollout_length * comp.envs_per_group
  lanes = _lane_seconds(tracer, t_from, t_to)
  return state, done, {
      "env_steps_per_s": steps / (t_to - t_from),
      "seconds": t_to - t_from,
      "lane_s_per_iteration": {k: v / iterations for k, v in lanes.items()},
      "lane_busy": {k: v / (t_to - t_from) for k, v in lanes.items()},
      "tracer": tracer, "window": (t_from - tracer.t0, t_to - tracer.t0),
  }


def bound_speedup(lane_s: dict[str, float], cores: int) -> float:
  """sum(L) / max(max(L), sum(L) / cores) over the four lanes' per-iteration times L."""
  from dvla_jax.swimlanes import lanes  # pylint: disable=g-import-not-at-top
  times = [lane_s.get(name, 0.0) for name in lanes.LANES]
  total = sum(times)
  return total / max(max(times), total / cores)


def throughput(args) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from dvla_jax.swimlanes import pipeline, sync  # pylint: disable=g-import-not-at-top
  from dvla_jax.training import builders, trainer  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
  import plot_timeline  # pylint: disable=g-import-not-at-top

  config = bench_config(args.quick, args.set)
  cores = args.cores or os.cpu_count()
  rounds = args.rounds or (1 if args.quick else 2)
  iterations = args.iterations or (6 if args.quick else 16)
  t0 = time.perf_counter()
  placement = trainer.make_placement(config)
  comp = builders.build(config)
  rng = jax.random.key(config.seed)
  abstract = jax.eval_shape(comp.init_train_state, rng)
  state = jax.jit(comp.init_train_state,
                  out_shardings=placement.state_shardings(abstract, "learner"))(rng)
  print(f"devices {jax.device_count()}, planes {placement.meshes.device_ids()}, cores {cores}",
        flush=True)
  runs = {"sync": [], "async": []}
  done = 0
  for r in range(rounds):
    for name, kind in (("sync", sync.SyncPipeline), ("async", pipeline.AsyncPipeline)):
      state, done, result = _run_pipeline(kind, comp, placement, state, done, iterations,
                                          args.warmup, jax.random.fold_in(rng, done), cores)
      runs[name].append(result)
      print(f"round {r} {name}: {result['env_steps_per_s']:.1f} env steps/s, lane busy "
            + ", ".join(f"{k} {v:.0%}" for k, v in sorted(result["lane_busy"].items())),
            flush=True)

  def mean(name, key):
    return sum(r[key] for r in runs[name]) / len(runs[name])

  lane_s = {}
  for r in runs["sync"]:
    for k, v in r["lane_s_per_iteration"].items():
      lane_s[k] = lane_s.get(k, 0.0) + v / len(runs["sync"])
  sync_rate, async_rate = mean("sync", "env_steps_per_s"), mean("async", "env_steps_per_s")
  bound = bound_speedup(lane_s, cores)
  base = os.path.splitext(args.out)[0]
  for name in ("sync", "async"):
    last = runs[name][-1]
    last["tracer"].write(f"{base}_{name}_trace.json", {"pipeline": name})
    spans = plot_timeline.load_spans(f"{base}_{name}_trace.json")
    start, end = last["window"]
    plot_timeline.plot(spans, f"{base}_{name}_timeline.png", max(start, end - 10.0), end,
                       title=f"{name} ({last['env_steps_per_s']:.0f} env steps/s)")
  return {
      "sync_env_steps_per_s": sync_rate,
      "async_env_steps_per_s": async_rate,
      "speedup": async_rate / sync_rate,
      "bound_speedup": bound,
      "fraction_of_bound": async_rate / sync_rate / bound,
      "bound_formula": "sum(L) / max(max(L), sum(L) / cores), L = sync lane busy s/iteration",
      "lane_s_per_iteration": lane_s,
      "lane_busy": {name: {k: sum(r["lane_busy"].get(k, 0.0) for r in runs[name])
                           / len(runs[name]) for k in lane_s} for name in runs},
      "per_round": {name: [r["env_steps_per_s"] for r in runs[name]] for name in runs},
      "cores": cores, "devices": jax.device_count(),
      "planes": placement.meshes.device_ids(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "iterations_per_run": iterations, "warmup_per_run": args.warmup, "rounds": rounds,
      "env_steps_per_iteration": config.rl.rollout_length * comp.envs_per_group,
      "config": {"num_envs": config.env.num_envs, "env_groups": config.swimlanes.env_groups,
                 "rollout_length": config.rl.rollout_length, "preset": config.model.preset,
                 "image_size": config.env.image_size, "num_slots": config.swimlanes.num_slots,
                 "update_epochs": config.rl.update_epochs,
                 "num_minibatches": config.rl.num_minibatches},
      "wall_s": time.perf_counter() - t0,
  }


def main(argv=None) -> int:
  args = _parse_args(argv)
  _setup_jax(args.devices)
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
  if args.sample_efficiency:
    import bench_sample_efficiency  # pylint: disable=g-import-not-at-top
    result = bench_sample_efficiency.run(args)
  else:
    result = throughput(args)
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2)
  print(json.dumps({k: v for k, v in result.items()
                    if k in ("sync_env_steps_per_s", "async_env_steps_per_s", "speedup",
                             "bound_speedup", "fraction_of_bound")}, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
