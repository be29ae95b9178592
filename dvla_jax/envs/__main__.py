"""The task suite from the command line: list tasks, record an expert episode, rate the experts.

  python -m dvla_jax.envs --list [--import_tasks=examples/custom_task.py]
  python -m dvla_jax.envs --task goal_stack_cubes --video stack.gif [--size 128]
      [--camera front,wrist] [--seed 0]
  python -m dvla_jax.envs --experts [--task NAME] [--episodes 16] [--out experts.json]

Bad input (an unknown task, an impossible setting) prints one line and exits with status 2.
"""

import argparse
import json
import sys

from dvla_jax.envs import custom
from dvla_jax.envs import expert_rates
from dvla_jax.envs import mjx_env
from dvla_jax.envs import registry
from dvla_jax.envs import video


def _list_lines() -> list[str]:
  # Suite order (spatial, object, goal, long), then the stand-alone tasks.
  names = [n for s in registry.list_suites() for n in registry.suite_tasks(s)]
  names += [n for n in registry.list_tasks() if n not in names]
  width = max(len(n) for n in names)
  return [f"{n:{width}s}  {registry.task_suite(n) or '-':8s}  {registry.describe(n)}"
          for n in names]


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m dvla_jax.envs", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--import_tasks", default="",
                      help="comma-separated task modules (files or module names) that "
                           "register tasks of their own, as env.import_tasks")
  parser.add_argument("--list", action="store_true",
                      help="print every task: name, suite, description")
  parser.add_argument("--task", help="a task name (see --list)")
  parser.add_argument("--video", help="record the task's expert episode to this .gif/.mp4")
  parser.add_argument("--size", type=int, default=128, help="camera resolution for --video")
  parser.add_argument("--camera", default="front",
                      help="comma-separated cameras for --video: front, top, wrist")
  parser.add_argument("--seed", type=int, default=0, help="layout seed")
  parser.add_argument("--steps", type=int, default=None, help="policy steps at most")
  parser.add_argument("--experts", action="store_true",
                      help="run the scripted experts and print their success rates")
  parser.add_argument("--episodes", type=int, default=16, help="episodes per task (--experts)")
  parser.add_argument("--out", help="also write the --experts table to this JSON file")
  args = parser.parse_args(argv)
  mjx_env.init_warp_quietly()

  try:
    if args.import_tasks:
      custom.import_tasks(args.import_tasks)
    if args.list:
      print("\n".join(_list_lines()))
      return 0
    if args.task is not None:
      registry.check_task(args.task)
    if args.experts:
      if args.episodes < 1:
        raise ValueError(f"--episodes={args.episodes}; allowed: >= 1")
      names = [args.task] if args.task else None
      table = expert_rates.expert_table(names, episodes=args.episodes, seed=args.seed)
      for name, row in table.items():
        print(f"{name:28s} success {row['success_rate']:.3f} over {row['episodes']} episodes, "
              f"{row['mean_steps']:.1f} steps of {row['episode_length']}")
      if args.out:
        with open(args.out, "w") as f:
          json.dump(table, f, indent=2)
      return 0
    if args.task is None or args.video is None:
      parser.print_usage(sys.stderr)
      print("error: give --list, --experts, or --task NAME --video FILE", file=sys.stderr)
      return 2
    if args.steps is not None and args.steps < 1:
      raise ValueError(f"--steps={args.steps}; allowed: >= 1")
    cameras = tuple(c.strip() for c in args.camera.split(",") if c.strip())
    result = video.record_expert_video(args.task, args.video, args.size, cameras, args.seed,
                                       args.steps)
  except (registry.UnknownTaskError, ValueError, NotImplementedError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  outcome = "succeeded" if result["success"] else "did not succeed"
  print(f"{result['task']}: \"{result['instruction']}\"; the expert {outcome} in "
        f"{result['steps']} steps; {result['frames']} frames -> {result['path']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
