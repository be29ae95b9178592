r"""Async against sync at equal env steps, with real staleness: does learning from older
rollouts cost success per env step?

    PYTHONPATH=. python experiments/bench_staleness.py --out=/tmp/staleness.json

One behaviour-cloning run (`--config.mode=sft` of `configs/demo.py`: the demo's 2048 expert
rows and cloning steps) is the start of every RL run (`rl.init_from`). From it, PPO runs on
`touch_cube` in the sync pipeline and in the async one, with the same two env groups, the
same batch per update and the same number of updates, so the env steps match. The async run
acts with weights up to `swimlanes.num_slots` versions old: its mean version lag
(`actor/version_lag`) is reported, and the comparison is only the one the issue asks for
when it is >= 1. Both evaluate the same fixed-seed episodes every `--eval_every` updates.

Writes FILE.json: `start` (the cloned policy's success), per pipeline its `curve` (env steps,
sampled and argmax success), `final`, `mean_version_lag`, `seconds`; `difference` (async
minus sync, final sampled success) and `noise` (two binomial standard errors of that
difference at the evaluation's episode count).
"""

import json
import math
import os
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs"))
import demo  # noqa: E402  (a config file, imported by path)

from dvla_jax.config import config_check  # noqa: E402
from dvla_jax.training import sft  # noqa: E402
from dvla_jax.training import trainer  # noqa: E402

_OUT = flags.DEFINE_string("out", None, "JSON output file.")
_ITERATIONS = flags.DEFINE_integer("iterations", 120, "PPO updates per pipeline.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 40, "Updates between evaluations.")
_SLOTS = flags.DEFINE_integer("num_slots", 4, "Async rollout slots (more: more staleness).")
_SFT_STEPS = flags.DEFINE_integer("sft_steps", 0, "Cloning steps (0: the demo's).")
_WORKDIR = flags.DEFINE_string("workdir", "", "Parent of the runs (default: a temp dir).")
flags.mark_flag_as_required("out")


def _validate(config):
  config_check.validate(config, known_tasks=config_check.registered_tasks,
                        known_presets=config_check.model_presets)
  return config


def _rl_config(pipeline: str, init_from: str):
  config = demo.get_config()
  config.rl.warmstart_steps = 0
  config.rl.init_from = init_from
  config.pipeline = pipeline
  config.swimlanes.env_groups = 2  # Both: 64 envs per update, groups taking turns.
  if pipeline == "async":
    config.swimlanes.num_slots = _SLOTS.value
  config.train.iterations = _ITERATIONS.value
  config.train.eval_every = _EVAL_EVERY.value
  config.train.checkpoint_every = _ITERATIONS.value
  config.train.keep_checkpoints = 1
  config.swimlanes.trace = False
  return _validate(config)


def _run(config, workdir: str) -> dict:
  rows = []
  t0 = time.perf_counter()
  trainer.train(config, workdir, progress_fn=lambda step, m: rows.append((step, dict(m))))
  seconds = time.perf_counter() - t0
  curve = [{"iteration": s, "env_steps": float(m.get("sim/env_steps", 0.0)),
            "success": float(m["eval/success_rate"]),
            "greedy_success": float(m["eval/greedy_success_rate"])}
           for s, m in rows if "eval/success_rate" in m]
  lags = [float(m["actor/version_lag"]) for _, m in rows if "actor/version_lag" in m]
  print(f"{config.pipeline}: " + ", ".join(
      f"{c['env_steps']:.0f} steps {c['success']:.3f}" for c in curve), flush=True)
  return {"curve": curve, "final": curve[-1], "mean_version_lag": float(np.mean(lags)),
          "seconds": seconds}


def main(argv):
  del argv
  parent = _WORKDIR.value or tempfile.mkdtemp(prefix="dvla_staleness_")
  sft_config = demo.get_config()
  sft_config.mode = "sft"
  sft_config.train.iterations = _SFT_STEPS.value or sft_config.rl.warmstart_steps
  sft_config.train.eval_every = sft_config.train.iterations
  sft_config.train.checkpoint_every = sft_config.train.iterations
  sft_config.train.log_every = 100
  sft_dir = os.path.join(parent, "sft")
  t0 = time.perf_counter()
  sft.train(_validate(sft_config), sft_dir, progress_fn=lambda step, m: None)
  sft_seconds = time.perf_counter() - t0
  result = {"sft_seconds": sft_seconds, "pipelines": {}}
  for pipeline in ("sync", "async"):
    result["pipelines"][pipeline] = _run(_rl_config(pipeline, sft_dir),
                                         os.path.join(parent, pipeline))
  sync, async_ = result["pipelines"]["sync"], result["pipelines"]["async"]
  result["start"] = sync["curve"][0]["success"]
  episodes = demo.get_config().train.eval_episodes
  p = (sync["final"]["success"] + async_["final"]["success"]) / 2
  result["difference"] = async_["final"]["success"] - sync["final"]["success"]
  result["noise"] = 2 * math.sqrt(2 * p * (1 - p) / episodes)
  result["settings"] = {"iterations": _ITERATIONS.value, "eval_every": _EVAL_EVERY.value,
                        "num_slots": _SLOTS.value, "eval_episodes": episodes}
  with open(_OUT.value, "w") as f:
    json.dump(result, f, indent=2)
  print(f"start {result['start']:.3f}; sync {sync['final']['success']:.3f}, async "
        f"{async_['final']['success']:.3f} (lag {async_['mean_version_lag']:.2f}) at "
        f"{sync['final']['env_steps']:.0f} env steps; difference {result['difference']:+.3f}, "
        f"noise +-{result['noise']:.3f}")


if __name__ == "__main__":
  app.run(main)
