r"""Few-demo, multi-task RL on a whole suite: success after behaviour cloning and after RL.

    PYTHONPATH=. python experiments/bench_rl.py --suite=goal --out=/tmp/rl_goal.json
    PYTHONPATH=. python experiments/bench_rl.py --quick --out=/tmp/rl_quick.json
    PYTHONPATH=. python experiments/bench_rl.py --suite=spatial --algo=grpo --seeds=3 \
        --demos_per_task=8 --out=/tmp/rl_spatial_grpo.json

Each seed is one run of `dvla_jax.training.trainer.train` on `env.task=suite:<suite>` (one
env for every task of the suite, the tasks taking turns over its worlds): the warm start
records `--demos_per_task` rows of each task's scripted expert and behaviour-clones them
(`rl.warmstart_steps`), the trainer evaluates that policy at iteration 0, and RL then trains
on the whole suite. The metrics rows (`progress_fn`) give the per-task success at the end of
cloning (iteration 0) and at the end of RL (last evaluation), and the success against env
steps (`sim/env_steps` of each evaluation row). Success is the sampled policy's
(`eval/success_rate`, the mean of the per-task rates); the argmax policy's is reported beside
it. The components are built once and reused by every seed (same compiled programs).

Settings start from `configs/demo.py` (the `small` model) with the overrides in `SETTINGS`
(and `QUICK` on top for `--quick`: 1 seed, small enough for <= 20 minutes on a 2-core CPU
with the default suite, goal); `--iterations` and `--warmstart_steps` override those.

Writes FILE.json with sft_success and rl_success (suite averages, mean over seeds),
sft_greedy_success, rl_greedy_success, per_task ({task: {sft, rl, sft_greedy, rl_greedy}},
means over seeds), env_steps and seconds (per run, mean), runs (per seed: the same numbers
and the curve), config (the first seed's run config) and settings; and FILE.png, success
against env steps per seed.
"""

import ast
import json
import os
import sys
import tempfile
import time
from typing import Any, Optional

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs"))
import demo  # noqa: E402  (a config file, imported by path)

from dvla_jax import envs  # noqa: E402
from dvla_jax.config import config_check  # noqa: E402
from dvla_jax.programs import builders  # noqa: E402
from dvla_jax.training import trainer  # noqa: E402

# Config overrides (dotted paths) on top of configs/demo.py; tune here.
SETTINGS: dict[str, Any] = {
    "model.preset": "small",
    # Episodes per update matter most (README, "What moved the goal suite"): from one cloned
    # start, 128 envs gained +0.08 in 10 updates where 32 envs gained +0.02 in 30.
    "env.num_envs": 128,
    "env.episode_length": 0,  # The longest task's limit.
    # Every env plays one episode per slot (GRPO always does): raised to the episode limit.
    "rl.rollout_length": 16,
    "rl.episodic_slots": True,
    "env.reward_shaping": 0.0,  # The sparse success reward (see README on shaping).
    "sft.label_sigma": 4.0,
    "rl.num_minibatches": 4,
    "rl.update_epochs": 2,
    "rl.group_size": 4,
    # From one cloned start (32 rows per task, 1000 cloning steps; README, "What moved the
    # goal suite"), 16 updates at lr 2e-4 gained +0.19 where 1e-4 gained +0.02 (10 updates);
    # 4 epochs per update ran past the KL limit, and learnability task sampling gained less.
    "rl.lr": 2e-4,
    "rl.warmstart_steps": 1000,
    "sft.batch_size": 128,
    "sft.expert_noise": 0.3,
    "train.iterations": 60,
    "train.eval_episodes": 128,
    "train.log_every": 2,
    "swimlanes.trace": False,
}
# --quick: on top of SETTINGS. On the 2-core CPU (goal suite, PPO, sync, 128 envs): an
# iteration about 22 s, an evaluation about 33 s, set-up, recording and cloning about 4 min;
# 918 s in all.
QUICK: dict[str, Any] = {
    "train.iterations": 26,
    "train.eval_episodes": 128,
}
EVAL_POINTS = 6  # Evaluations per run after iteration 0 (the curve's points).
QUICK_EVAL_POINTS = 2
ASYNC_ENV_GROUPS = 2

_SUITE = flags.DEFINE_enum("suite", "goal", list(envs.list_suites()), "Suite to train on.")
_ALGO = flags.DEFINE_enum("algo", "ppo", ["ppo", "grpo"], "RL algorithm.")
_PIPELINE = flags.DEFINE_enum("pipeline", "sync", ["sync", "async"], "Trainer pipeline.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds (runs); --quick runs 1.")
_DEMOS = flags.DEFINE_integer("demos_per_task", 32, "Expert demonstration rows per task.")
_QUICK = flags.DEFINE_bool("quick", False, "1 seed, small settings (with the default --suite, "
                           "goal: <= 20 minutes on a 2-core CPU).")
_ITERATIONS = flags.DEFINE_integer("iterations", 0, "RL iterations (0: the settings').")
_WARMSTART = flags.DEFINE_integer("warmstart_steps", -1,
                                  "Behaviour-cloning steps (-1: the settings').")
_EVAL_EPISODES = flags.DEFINE_integer("eval_episodes", 0, "Episodes per evaluation (0: the "
                                     "settings').")
_SET = flags.DEFINE_multi_string("set", [], "Further config overrides, KEY=VALUE (a dotted "
                                 "path and a Python literal), e.g. --set=rl.lr=3e-4; "
                                 "repeatable; applied last.")
_WORKDIR = flags.DEFINE_string("workdir", "", "Parent of the runs' workdirs (default: a "
                               "temporary directory).")
_OUT = flags.DEFINE_string("out", None, "JSON output file (the plot goes next to it).")
flags.mark_flag_as_required("out")


def _set(config, path: str, value) -> None:
  *parents, name = path.split(".")
  node = config
  for parent in parents:
    node = node[parent]
  if name not in node:
    raise SystemExit(f"--set: {path} is not a config field")
  node[name] = value


def parse_overrides(items: list[str]) -> dict[str, Any]:
  """`KEY=VALUE` strings to {dotted path: value}; a value that is not a Python literal is
  taken as a string."""
  out = {}
  for item in items:
    key, sep, text = item.partition("=")
    if not sep or not key:
      raise SystemExit(f"--set={item!r}: want KEY=VALUE, e.g. --set=rl.lr=3e-4")
    try:
      out[key] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      out[key] = text
  return out


def make_config(suite: str, algo: str, pipeline: str, demos_per_task: int, quick: bool,
                iterations: int = 0, warmstart_steps: int = -1, eval_episodes: int = 0,
                overrides: Optional[dict[str, Any]] = None):
  """The run config of one seed (seed 0), validated; returns (config, settings applied)."""
  settings = dict(SETTINGS, **(QUICK if quick else {}))
  if iterations:
    settings["train.iterations"] = iterations
  if warmstart_steps >= 0:
    settings["rl.warmstart_steps"] = warmstart_steps
  if eval_episodes:
    settings["train.eval_episodes"] = eval_episodes
  settings.update(overrides or {})
  config = demo.get_config()
  for path, value in settings.items():
    _set(config, path, value)
  config.env.task = envs.SUITE_PREFIX + suite
  config.rl.algo = algo
  config.pipeline = pipeline
  config.sft.episodes = demos_per_task
  if pipeline == "async":
    config.swimlanes.env_groups = ASYNC_ENV_GROUPS
  if algo == "grpo" or config.rl.episodic_slots:
    names = envs.resolve_tasks(config.env.task)
    limit = envs.SuiteEnv.default_config(builders.env_config(config, 1),
                                         task_names=names).episode_length
    config.rl.rollout_length = max(config.rl.rollout_length, limit)
  total = config.train.iterations
  config.train.eval_every = max(1, total // (QUICK_EVAL_POINTS if quick else EVAL_POINTS))
  config.train.checkpoint_every = total
  config.train.keep_checkpoints = 1
  config_check.validate(config, known_tasks=config_check.registered_tasks,
                        known_presets=config_check.model_presets)
  return config, settings


class _Recorder:
  """The trainer's progress_fn: keeps every row and prints a line per log and evaluation."""

  def __init__(self, seed: int, total: int, log_path: Optional[str] = None):
    self.seed, self.total, self.rows = seed, total, []
    self.t0 = time.perf_counter()
    self.log_path = log_path

  def __call__(self, step: int, metrics: dict) -> None:
    row = {k: float(v) for k, v in metrics.items()
           if np.ndim(v) == 0 and np.issubdtype(np.asarray(v).dtype, np.number)}
    self.rows.append((step, row))
    if self.log_path:  # Every row, for a look at the learner afterwards.
      with open(self.log_path, "a") as f:
        f.write(json.dumps({"step": step, **row}) + "\n")
    elapsed = time.perf_counter() - self.t0
    if "eval/success_rate" in row:
      print(f"[seed {self.seed} {elapsed:6.0f}s] iteration {step}/{self.total} eval: "
            f"success {row['eval/success_rate']:.3f} greedy "
            f"{row['eval/greedy_success_rate']:.3f} at {row.get('sim/env_steps', 0):.0f} "
            "env steps", flush=True)
    elif "warmstart/loss" in row:
      print(f"[seed {self.seed} {elapsed:6.0f}s] warm start step {row['warmstart/step']:.0f}: "
            f"loss {row['warmstart/loss']:.3f}", flush=True)
    elif "rollout/success_rate" in row:
      print(f"[seed {self.seed} {elapsed:6.0f}s] iteration {step}/{self.total}: rollout "
            f"success {row['rollout/success_rate']:.3f}, approx-KL "
            f"{row.get('learner/approx_kl', float('nan')):.4f}, "
            f"{row.get('sim/env_steps_per_s', 0):.0f} env steps/s", flush=True)

  def evaluations(self) -> list[tuple[int, dict]]:
    return [(step, row) for step, row in self.rows if "eval/success_rate" in row]


def _scores(row: dict, names: list[str]) -> dict[str, Any]:
  """Suite and per-task success (sampled and greedy) of one evaluation row."""
  def task(name, key):
    return row.get(f"eval/{name}/{key}", row[f"eval/{key}"])  # One task: no per-task keys.

  return {
      "success": row["eval/success_rate"],
      "greedy_success": row["eval/greedy_success_rate"],
      "per_task": {n: {"success": task(n, "success_rate"),
                       "greedy_success": task(n, "greedy_success_rate")} for n in names},
  }


def run_seed(config, seed: int, workdir: str, components) -> dict[str, Any]:
  """One training run; its success after cloning and after RL, and its curve."""
  config = config.copy_and_resolve_references()
  config.seed = seed
  if os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise SystemExit(f"{workdir} holds a run already; remove it or choose another --workdir")
  names = envs.resolve_tasks(config.env.task)
  os.makedirs(workdir, exist_ok=True)
  recorder = _Recorder(seed, config.train.iterations, os.path.join(workdir, "rows.jsonl"))
  t0 = time.perf_counter()
  trainer.train(config, workdir, progress_fn=recorder, components=components)
  seconds = time.perf_counter() - t0
  evals = recorder.evaluations()
  (first_step, first), (_, last) = evals[0], evals[-1]
  assert first_step == 0, "the trainer evaluates at iteration 0 (after the warm start)"
  curve = [{"iteration": step, "env_steps": row.get("sim/env_steps", 0.0),
            **_scores(row, names)} for step, row in evals]
  return {"seed": seed, "sft": _scores(first, names), "rl": _scores(last, names),
          "env_steps": last.get("sim/env_steps", 0.0), "seconds": seconds, "curve": curve,
          "workdir": workdir}


def summarize(runs: list[dict], names: list[str]) -> dict[str, Any]:
  """Means over seeds of the suite and per-task success, after cloning and after RL."""
  def mean(values):
    return float(np.mean(values))

  out = {
      "sft_success": mean([r["sft"]["success"] for r in runs]),
      "rl_success": mean([r["rl"]["success"] for r in runs]),
      "sft_greedy_success": mean([r["sft"]["greedy_success"] for r in runs]),
      "rl_greedy_success": mean([r["rl"]["greedy_success"] for r in runs]),
      "per_task": {},
      "env_steps": mean([r["env_steps"] for r in runs]),
      "seconds_per_run": mean([r["seconds"] for r in runs]),
  }
  for name in names:
    out["per_task"][name] = {
        "sft": mean([r["sft"]["per_task"][name]["success"] for r in runs]),
        "rl": mean([r["rl"]["per_task"][name]["success"] for r in runs]),
        "sft_greedy": mean([r["sft"]["per_task"][name]["greedy_success"] for r in runs]),
        "rl_greedy": mean([r["rl"]["per_task"][name]["greedy_success"] for r in runs]),
    }
  return out


def plot(runs: list[dict], title: str, path: str) -> None:
  """Success (sampled, solid; greedy, dashed) against env steps, one colour per seed."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for i, run in enumerate(runs):
    steps = [p["env_steps"] for p in run["curve"]]
    colour = f"C{i % 10}"
    ax.plot(steps, [p["success"] for p in run["curve"]], "o-", color=colour,
            label=f"seed {run['seed']} sampled")
    ax.plot(steps, [p["greedy_success"] for p in run["curve"]], "x--", color=colour,
            alpha=0.6, label=f"seed {run['seed']} greedy")
  ax.set_xlabel("env steps (RL; 0 = after behaviour cloning)")
  ax.set_ylabel("suite success rate (mean over tasks)")
  ax.set_ylim(-0.02, 1.02)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)
  t0 = time.perf_counter()
  suite = _SUITE.value
  seeds = 1 if _QUICK.value else _SEEDS.value
  config, settings = make_config(suite, _ALGO.value, _PIPELINE.value, _DEMOS.value,
                                 _QUICK.value, _ITERATIONS.value, _WARMSTART.value,
                                 _EVAL_EPISODES.value, parse_overrides(_SET.value))
  names = envs.resolve_tasks(config.env.task)
  print(f"suite {suite} ({len(names)} tasks), {_ALGO.value}, {_PIPELINE.value} pipeline, "
        f"{seeds} seed(s), {_DEMOS.value} demos per task, {config.env.num_envs} envs, "
        f"{config.rl.warmstart_steps} cloning steps, {config.train.iterations} RL iterations",
        flush=True)
  root = _WORKDIR.value or tempfile.mkdtemp(prefix="bench_rl_")
  components = builders.build(config)
  runs = []
  for seed in range(seeds):
    workdir = os.path.join(root, f"{suite}_{_ALGO.value}_{_PIPELINE.value}_seed{seed}")
    runs.append(run_seed(config, seed, workdir, components))
    print(f"seed {seed}: success after cloning {runs[-1]['sft']['success']:.3f}, after RL "
          f"{runs[-1]['rl']['success']:.3f} ({runs[-1]['seconds']:.0f}s)", flush=True)
  out = _OUT.value
  png = os.path.splitext(out)[0] + ".png"
  result = {
      "suite": suite, "tasks": names, "algo": _ALGO.value, "pipeline": _PIPELINE.value,
      "seeds": seeds, "demos_per_task": _DEMOS.value, "quick": _QUICK.value,
      **summarize(runs, names),
      "seconds": time.perf_counter() - t0,
      "runs": runs, "plot": png, "device": jax.devices()[0].platform,
      "settings": settings, "config": config.to_dict(),
  }
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w") as f:
    json.dump(result, f, indent=1)
  plot(runs, f"{suite} suite, {_ALGO.value}, {_DEMOS.value} demos/task", png)
  print(f"success after cloning {result['sft_success']:.3f}, after RL "
        f"{result['rl_success']:.3f} (mean of {seeds} seed(s)); {result['seconds']:.0f}s")
  for name, row in result["per_task"].items():
    print(f"  {name:24s} cloning {row['sft']:.3f}  RL {row['rl']:.3f}")
  print(f"results: {out}, plot: {png}")


if __name__ == "__main__":
  app.run(main)
