r"""Async swimlanes vs the synchronous baseline, in one process on an identical config.

    python experiments/bench_pipeline.py --out=/tmp/pipe.json [--quick] [--devices=8]
    python experiments/bench_pipeline.py --sample_efficiency --out=/tmp/eff.json

Throughput mode (default): builds the components once, so both pipelines run the very same
compiled programs, then alternates sync and async runs of the same number of iterations
(rounds: sync, async, sync, async, ...; the first iterations of each run are warm-up and not
timed). It reports env steps per second of each, their ratio, and the bound the measured lane
times allow on the devices present:

    L_i     busy seconds of lane i per iteration in the timed sync iterations (sampling,
            inference, gradient, distribution); sum_i L_i is the sync iteration time
    C       CPU seconds the process used per sync iteration (all threads)
    bound_speedup = sum_i L_i / max(max_i L_i, C / usable_cores)

i.e. a perfect async pipeline runs every lane at once but can neither beat its slowest lane
nor do the iteration's CPU work faster than the cores allow (`--cores`, default this
machine's CPU count). With single-threaded computations C = sum_i L_i and this is
sum_i L_i / max(max_i L_i, sum_i L_i / cores) (also reported, as bound_speedup_lane_sum).
The two terms are reported on their own too: bound_lane_limited = sum_i L_i / max_i L_i, and
bound_core_limited = cores * sum_i L_i / C, which is cores over the cores the sync run used:
a sync baseline that already keeps 1.3 of 2 cores busy leaves room for at most about 1.5x.
XLA:CPU runs every computation on one intra-op pool of max(cores, devices) threads shared by
all fake devices and splits independent ops of a program across it (the learner update uses
about 1.6 of 2 cores); `--xla_cpu_multi_thread_eigen=false` (set for sync and async alike)
keeps each matmul on one thread, but that pool cannot be made single-threaded, so C exceeds
sum_i L_i and the first form is the honest one.

Writes FILE.json with sync_env_steps_per_s, async_env_steps_per_s, speedup, bound_speedup,
lane_busy (per pipeline), lane_s_per_iteration, cores_taken_by_others (per round: the cores
other processes and, on a virtual machine, the hypervisor's steal took from the run, from
/proc/stat; a shared machine's neighbours make a run's ratio meaningless, and this shows when),
and next to it the two traces and timelines (FILE_sync_timeline.png, FILE_async_timeline.png).
Rounds: 3 of 4 timed iterations with --quick, 4 of 8 otherwise; short alternating runs let
both pipelines see the same machine.

Sample-efficiency mode (`--sample_efficiency`; `--quick` about 10 CPU-minutes per run, nine
runs): trains the demo task with the `tiny` model after a short behaviour-cloning warm start,
64 envs in 2 env groups, with the sync pipeline and with the async one at rl.max_staleness 1
and 2 (`--seeds` seeds each, default 3; `--variants=0,2` picks some), and plots evaluation
success and return against env steps (FILE.png, mean +- std over seeds); FILE_runs.jsonl gets
each run as it finishes; the JSON holds the curves, the final success rates and whether each
variant is within seed noise of sync (final means within two standard errors).
"""

import argparse
import json
import os
import sys
import threading
import time
from typing import Optional

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
  parser.add_argument("--seeds", type=int, default=3, help="seeds per variant (efficiency)")
  parser.add_argument("--variants", default="",
                      help="comma-separated variant indices to run (efficiency; '': all)")
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
  from dvla_jax.config import default_config  # pylint: disable=g-import-not-at-top
  config = default_config.get_config()
  config.pipeline = "async"
  config.env.num_envs = 64
  config.env.episode_length = 16
  config.model.preset = "small"
  config.rl.rollout_length = 8
  config.rl.update_epochs = 3
  config.rl.num_minibatches = 2
  config.rl.decoupled = "on"  # The same update program in both pipelines.
  config.swimlanes.env_groups = 2
  config.swimlanes.num_slots = 3
  config.placement.mode = "disaggregated"
  config.placement.sim.devices = 2
  config.train.eval_every = 10**6
  config.train.checkpoint_every = 10**6
  for item in overrides:
    _override(config, item)
  return config


def _override(config, item: str) -> None:
  """Applies one `group.field=value` override, converting to the field's type."""
  path, value = item.split("=", 1)
  *groups, field = path.split(".")
  node = config
  for g in groups:
    node = node[g]
  if isinstance(node[field], bool):
    node[field] = value.lower() in ("1", "true")
  else:
    node[field] = type(node[field])(value)


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


def _cpu_counters() -> Optional[tuple[float, float]]:
  """(busy, steal) CPU seconds of the whole machine so far, from /proc/stat (None elsewhere).

  Steal is time the hypervisor gave this virtual machine's vCPUs to someone else; busy counts
  every process here, this one included.
  """
  try:
    with open("/proc/stat", encoding="ascii") as f:
      fields = [int(x) for x in f.readline().split()[1:9]]
  except (OSError, ValueError):
    return None
  user, nice, system, _, _, irq, softirq, steal = fields
  hz = os.sysconf("SC_CLK_TCK")
  return (user + nice + system + irq + softirq) / hz, steal / hz


def _run_pipeline(kind, components, placement, state, start, iterations, warmup, rng, cores):
  """Runs `iterations` updates with pipeline class `kind`; returns timing and the new state."""
  from dvla_jax.swimlanes import tracing  # pylint: disable=g-import-not-at-top
  tracer = tracing.Tracer(True, 10**6)
  pipe = kind(components, placement, tracer, rng)
  marks, cpu, machine = {}, {}, {}

  def on_update(iteration, _state, _metrics):
    marks[iteration] = time.perf_counter()
    cpu[iteration] = time.process_time()
    machine[iteration] = _cpu_counters()

  total = start + warmup + iterations
  state, done = pipe.run(state, start, total, on_update, threading.Event())
  t_from, t_to = marks[start + warmup], marks[total]
  steps = iterations * components.config.rl.rollout_length * components.envs_per_group
  lanes = _lane_seconds(tracer, t_from, t_to)
  own = cpu[total] - cpu[start + warmup]
  first, last = machine[start + warmup], machine[total]
  # Cores the window lost to other processes here and to other virtual machines (steal).
  others = None if first is None else {
      "other_processes": max(last[0] - first[0] - own, 0.0) / (t_to - t_from),
      "steal": (last[1] - first[1]) / (t_to - t_from)}
  return state, done, {
      "env_steps_per_s": steps / (t_to - t_from),
      "seconds": t_to - t_from,
      "cpu_s_per_iteration": own / iterations,
      "cores_used": own / (t_to - t_from),
      "lane_s_per_iteration": {k: v / iterations for k, v in lanes.items()},
      "lane_busy": {k: v / (t_to - t_from) for k, v in lanes.items()},
      "cores_taken_by_others": others,
      "tracer": tracer, "window": (t_from - tracer.t0, t_to - tracer.t0),
  }


def bound_speedup(lane_s: dict[str, float], cores: int, cpu_s: Optional[float] = None) -> float:
  """sum(L) / max(max(L), C / cores) over the four lanes' per-iteration times L.

  Args:
    lane_s: lane name -> busy seconds per iteration in the sync run.
    cores: usable cores.
    cpu_s: CPU seconds per sync iteration (None: sum(L), i.e. single-threaded lanes).
  """
  from dvla_jax.swimlanes import lanes  # pylint: disable=g-import-not-at-top
  times = [lane_s.get(name, 0.0) for name in lanes.LANES]
  total = sum(times)
  return total / max(max(times), (total if cpu_s is None else cpu_s) / cores)


def throughput(args) -> dict:
  import jax  # pylint: disable=g-import-not-at-top

  from dvla_jax.programs import builders  # pylint: disable=g-import-not-at-top
  from dvla_jax.swimlanes import pipeline  # pylint: disable=g-import-not-at-top
  from dvla_jax.swimlanes import sync  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
  import plot_timeline  # pylint: disable=g-import-not-at-top

  config = bench_config(args.quick, args.set)
  cores = args.cores or os.cpu_count()
  rounds = args.rounds or (3 if args.quick else 4)
  iterations = args.iterations or (4 if args.quick else 8)
  t0 = time.perf_counter()
  placement = builders.make_placement(config)
  components = builders.build(config)
  rng = jax.random.key(config.seed)
  abstract = jax.eval_shape(components.init_train_state, rng)
  state = jax.jit(components.init_train_state,
                  out_shardings=placement.state_shardings(abstract, "learner"))(rng)
  print(f"devices {jax.device_count()}, planes {placement.meshes.device_ids()}, cores {cores}",
        flush=True)
  runs = {"sync": [], "async": []}
  done = 0
  for r in range(rounds):
    for name, kind in (("sync", sync.SyncPipeline), ("async", pipeline.AsyncPipeline)):
      state, done, result = _run_pipeline(kind, components, placement, state, done, iterations,
                                          args.warmup, jax.random.fold_in(rng, done), cores)
      runs[name].append(result)
      taken = result["cores_taken_by_others"]
      print(f"round {r} {name}: {result['env_steps_per_s']:.1f} env steps/s, "
            f"{result['cores_used']:.2f} cores, lane busy "
            + ", ".join(f"{k} {v:.0%}" for k, v in sorted(result["lane_busy"].items()))
            + ("" if taken is None else f"; cores taken by other processes "
               f"{taken['other_processes']:.2f}, by steal {taken['steal']:.2f}"), flush=True)

  def mean(name, key):
    return sum(r[key] for r in runs[name]) / len(runs[name])

  lane_s = {}
  for r in runs["sync"]:
    for k, v in r["lane_s_per_iteration"].items():
      lane_s[k] = lane_s.get(k, 0.0) + v / len(runs["sync"])
  sync_rate, async_rate = mean("sync", "env_steps_per_s"), mean("async", "env_steps_per_s")
  sync_cpu = mean("sync", "cpu_s_per_iteration")
  bound = bound_speedup(lane_s, cores, sync_cpu)
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
      "bound_formula": "sum(L) / max(max(L), C / cores); L = sync lane busy s per iteration, "
                       "C = sync CPU s per iteration",
      "bound_speedup_lane_sum": bound_speedup(lane_s, cores),
      # The two terms of the bound: the slowest lane, and the cores the sync run left idle.
      "bound_lane_limited": sum(lane_s.values()) / max(lane_s.values()),
      "bound_core_limited": sum(lane_s.values()) * cores / sync_cpu,
      "sync_cpu_s_per_iteration": sync_cpu,
      "cores_used": {name: mean(name, "cores_used") for name in runs},
      "lane_s_per_iteration": lane_s,
      "lane_busy": {name: {k: sum(r["lane_busy"].get(k, 0.0) for r in runs[name])
                           / len(runs[name]) for k in lane_s} for name in runs},
      "per_round": {name: [r["env_steps_per_s"] for r in runs[name]] for name in runs},
      # Cores this run could not have, per round: a busy neighbour makes the ratio meaningless.
      "cores_taken_by_others": {name: [r["cores_taken_by_others"] for r in runs[name]]
                                for name in runs},
      "cores": cores, "devices": jax.device_count(),
      "planes": placement.meshes.device_ids(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "iterations_per_run": iterations, "warmup_per_run": args.warmup, "rounds": rounds,
      "env_steps_per_iteration": config.rl.rollout_length * components.envs_per_group,
      "config": {"num_envs": config.env.num_envs, "env_groups": config.swimlanes.env_groups,
                 "rollout_length": config.rl.rollout_length, "preset": config.model.preset,
                 "image_size": config.env.image_size, "num_slots": config.swimlanes.num_slots,
                 "update_epochs": config.rl.update_epochs,
                 "num_minibatches": config.rl.num_minibatches},
      "wall_s": time.perf_counter() - t0,
  }


_VARIANTS = (("sync", "sync", -1), ("async, max_staleness 1", "async", 1),
             ("async, max_staleness 2", "async", 2))


def efficiency_config(pipeline: str, max_staleness: int, seed: int, quick: bool, overrides=()):
  """The demo task with the `tiny` model, 64 envs in 2 env groups, on one device.

  A short behaviour-cloning warm start (`rl.warmstart_steps`) brings the policy to a success
  rate PPO can climb from; the curves then compare how each pipeline's PPO uses env steps.
  """
  from dvla_jax.config import config_check  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "demo.py")
  config = config_check.load_config_file(path)
  config.seed = seed
  config.pipeline = pipeline
  config.model.preset = "tiny"
  config.env.num_envs = 64
  config.rl.max_staleness = max_staleness
  config.rl.warmstart_steps = 150 if quick else 300
  config.rl.lr = 1e-4  # Gentler than the demo's 3e-4: PPO at 3e-4 unlearnt the tiny clone.
  config.sft.batch_size = 64
  config.swimlanes.env_groups = 2
  config.swimlanes.trace = False
  config.train.iterations = 24 if quick else 60
  config.train.log_every = 4
  config.train.eval_every = 6 if quick else 10
  config.train.eval_episodes = 128
  config.train.checkpoint_every = 10**6
  for item in overrides:
    _override(config, item)
  return config


def sample_efficiency(args) -> dict:
  """Success rate and return against env steps for sync and async (max_staleness 1, 2).

  Every finished run is appended to FILE.json's "runs" at once, so an interrupted study keeps
  what it measured (and a rerun with --variants picks up the missing ones by hand).
  """
  import tempfile  # pylint: disable=g-import-not-at-top

  import matplotlib  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  from dvla_jax.programs import builders  # pylint: disable=g-import-not-at-top
  from dvla_jax.training import trainer  # pylint: disable=g-import-not-at-top

  seeds = tuple(range(args.seeds))
  chosen = ([_VARIANTS[int(i)] for i in args.variants.split(",")] if args.variants
            else list(_VARIANTS))
  curves = {}
  t0 = time.perf_counter()
  partial = os.path.splitext(args.out)[0] + "_runs.jsonl"
  for label, pipeline, staleness in chosen:
    components = None
    curves[label] = []
    for seed in seeds:
      config = efficiency_config(pipeline, staleness, seed, args.quick, args.set)
      components = components or builders.build(config)  # Seeds share the compiled programs.
      rows = []
      t_run = time.perf_counter()
      with tempfile.TemporaryDirectory() as workdir:
        trainer.train(config, workdir, progress_fn=lambda i, m: rows.append(dict(m, step=i)),
                      components=components)
      evals = [(r["sim/env_steps"], r["eval/success_rate"], r["eval/episode_return"])
               for r in rows if "eval/success_rate" in r]
      lags = [r["actor/version_lag"] for r in rows if "actor/version_lag" in r]
      curves[label].append(evals)
      with open(partial, "a", encoding="utf-8") as f:
        f.write(json.dumps({"variant": label, "seed": seed, "evals": evals,
                            "mean_version_lag": float(np.mean(lags)) if lags else 0.0,
                            "wall_s": time.perf_counter() - t_run}) + "\n")
      print(f"{label} seed {seed}: eval success {[round(x[1], 3) for x in evals]} return "
            f"{[round(x[2], 2) for x in evals]} lag {np.mean(lags) if lags else 0:.2f} "
            f"({time.perf_counter() - t0:.0f}s)", flush=True)
  summary = {}
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  for label, runs in curves.items():
    steps = np.array([x[0] for x in runs[0]], float)
    success = np.array([[x[1] for x in run] for run in runs], float)
    ret = np.array([[x[2] for x in run] for run in runs], float)
    for ax, values in zip(axes, (success, ret)):
      mean, std = values.mean(0), values.std(0)
      ax.plot(steps, mean, marker="o", label=label)
      ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    summary[label] = {"final_mean": float(success[:, -1].mean()),
                      "final_std": float(success[:, -1].std()),
                      "final_per_seed": success[:, -1].tolist(),
                      "final_return_mean": float(ret[:, -1].mean()),
                      "final_return_std": float(ret[:, -1].std()),
                      "area_under_curve": float(success.mean())}
  for ax, name in zip(axes, ("eval success rate", "eval episode return")):
    ax.set_xlabel("env steps")
    ax.set_ylabel(f"{name} ({len(seeds)} seeds, mean +- std)")
    ax.grid(alpha=0.3)
  axes[0].legend()
  fig.tight_layout()
  png = os.path.splitext(args.out)[0] + ".png"
  fig.savefig(png, dpi=120)
  if "sync" in summary:
    sync = summary["sync"]
    for label, stats in summary.items():
      # Same within seed noise: the final means differ by at most two standard errors of the
      # difference (with a floor of 0.05 for the evaluation's own sampling noise).
      noise = 2.0 * np.sqrt((stats["final_std"] ** 2 + sync["final_std"] ** 2) / len(seeds))
      stats["within_noise_of_sync"] = bool(abs(stats["final_mean"] - sync["final_mean"])
                                           <= max(noise, 0.05))
  return {"variants": summary, "curves": curves, "plot": png, "seeds": list(seeds),
          "wall_s": time.perf_counter() - t0}


def main(argv=None) -> int:
  args = _parse_args(argv)
  _setup_jax(args.devices)
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
  if args.sample_efficiency:
    result = sample_efficiency(args)
  else:
    result = throughput(args)
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2)
  print(json.dumps({k: v for k, v in result.items()
                    if k in ("sync_env_steps_per_s", "async_env_steps_per_s", "speedup",
                             "bound_speedup", "fraction_of_bound", "variants")}, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
