r"""RL variants side by side from one cloned start: which learner settings move a suite.

    PYTHONPATH=. python experiments/bench_rl_variants.py --out=/tmp/variants.json \
        --variant=ppo: --variant=ppo_lr3e-4:rl.lr=3e-4 --variant=grpo:rl.algo=grpo

Takes `bench_rl.py`'s flags. Behaviour cloning runs once (`bench_rl.make_config`'s settings
with the `--quick` sizes, whether or not --quick is given; `--suite`, `--demos_per_task`,
`--warmstart_steps`); its policy is the start of every variant
(`rl.init_from`), so the variants differ only in their RL settings. A variant is
`NAME:KEY=VALUE,KEY=VALUE` (dotted config paths, Python literals); each one builds its own
programs (learner settings are compiled in) and runs `--iterations` (default 30) RL
iterations. Every run
evaluates at iteration 0 (the cloned policy: the same number for every variant, the
evaluation seeds being fixed) and at the end, on `--eval_episodes` (default 160) episodes.

Writes FILE.json: the settings, and per variant its overrides, the success after cloning and
after RL (sampled and argmax, suite and per task), env steps and seconds.
"""

import ast
import json
import os
import sys
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_rl  # noqa: E402  (the sibling benchmark: settings, config and one run)

from dvla_jax import envs  # noqa: E402
from dvla_jax.programs import builders  # noqa: E402

_VARIANT = flags.DEFINE_multi_string("variant", ["ppo:"], "NAME:KEY=VALUE,... (repeatable).")
_CLONE_ITERATIONS = 1  # The cloning run: warm start, evaluation, one critic-only iteration.


def parse_variant(text: str) -> tuple[str, dict]:
  """`NAME:KEY=VALUE,...` to (name, {dotted path: value})."""
  name, sep, rest = text.partition(":")
  if not sep or not name:
    raise SystemExit(f"--variant={text!r}: want NAME:KEY=VALUE,... (NAME: alone for none)")
  overrides = {}
  for item in filter(None, rest.split(",")):
    key, eq, value = item.partition("=")
    if not eq:
      raise SystemExit(f"--variant={text!r}: {item!r} is not KEY=VALUE")
    try:
      overrides[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      overrides[key] = value
  return name, overrides


def main(argv) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)
  out = flags.FLAGS.out
  variants = [parse_variant(v) for v in _VARIANT.value]
  root = flags.FLAGS.workdir or tempfile.mkdtemp(prefix="bench_rl_variants_")
  suite, demos = flags.FLAGS.suite, flags.FLAGS.demos_per_task
  names = envs.resolve_tasks(envs.SUITE_PREFIX + suite)
  eval_episodes = flags.FLAGS.eval_episodes or 160
  iterations = flags.FLAGS.iterations or 30
  # 1. The cloned start.
  clone_config, settings = bench_rl.make_config(
      suite, "ppo", "sync", demos, True, iterations=_CLONE_ITERATIONS,
      warmstart_steps=flags.FLAGS.warmstart_steps, eval_episodes=eval_episodes)
  start = os.path.join(root, "cloned")
  t0 = time.perf_counter()
  clone = bench_rl.run_seed(clone_config, 0, start, builders.build(clone_config))
  print(f"cloned start: success {clone['sft']['success']:.3f} ({time.perf_counter() - t0:.0f}s)",
        flush=True)
  # 2. The variants, each from that start.
  rows = []
  for name, overrides in variants:
    config, _ = bench_rl.make_config(
        suite, overrides.get("rl.algo", "ppo"), overrides.get("pipeline", "sync"), demos, True,
        iterations=iterations, warmstart_steps=0, eval_episodes=eval_episodes,
        overrides={k: v for k, v in overrides.items() if k not in ("rl.algo", "pipeline")})
    config.rl.init_from = start
    config.train.eval_every = iterations
    t0 = time.perf_counter()
    run = bench_rl.run_seed(config, 0, os.path.join(root, name), builders.build(config))
    row = {"variant": name, "overrides": overrides, "sft_success": run["sft"]["success"],
           "rl_success": run["rl"]["success"],
           "sft_greedy_success": run["sft"]["greedy_success"],
           "rl_greedy_success": run["rl"]["greedy_success"],
           "per_task": {n: {"sft": run["sft"]["per_task"][n]["success"],
                            "rl": run["rl"]["per_task"][n]["success"]} for n in names},
           "env_steps": run["env_steps"], "seconds": time.perf_counter() - t0}
    rows.append(row)
    print(f"{name}: success {row['sft_success']:.3f} -> {row['rl_success']:.3f} "
          f"({row['env_steps']:.0f} env steps, {row['seconds']:.0f}s)", flush=True)
    result = {"suite": suite, "tasks": names, "demos_per_task": demos,
              "iterations": iterations, "eval_episodes": eval_episodes,
              "cloned_start": clone["sft"], "settings": settings, "variants": rows,
              "device": jax.devices()[0].platform}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:  # After every variant: a long run keeps what it measured.
      json.dump(result, f, indent=1)
  print(f"results: {out}")


if __name__ == "__main__":
  app.run(main)
