"""Scores of an evaluation: Wilson intervals, the per-task summary, the table and the JSON.

Pure Python and numpy (no JAX), so the command line and its tests load it quickly.
"""

import json
import math
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np

# Two-sided 95% normal quantile.
Z_95 = 1.959963984540054


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
  """The Wilson score interval of a success rate.

  Unlike the normal approximation p +- z*sqrt(p(1-p)/n), it stays inside [0, 1] and is not
  empty at 0 or n successes, which is where small evaluations of RL policies usually are.

  Args:
    successes: episodes that succeeded, 0..trials.
    trials: episodes in total (> 0).
    z: normal quantile of the confidence level (1.96 for 95%).

  Returns:
    (low, high) bounds of the success rate.
  """
  if trials <= 0 or not 0 <= successes <= trials:
    raise ValueError(f"wilson_interval: need 0 <= successes <= trials and trials > 0, "
                     f"got {successes}/{trials}")
  p = successes / trials
  z2 = z * z
  denom = 1.0 + z2 / trials
  centre = (p + z2 / (2 * trials)) / denom
  half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / denom
  return max(0.0, centre - half), min(1.0, centre + half)


def task_summary(success: Sequence[float], episode_return: Sequence[float],
                 length: Sequence[float]) -> dict[str, Any]:
  """Success rate with its 95% interval, mean return and length of one task's episodes.

  Args:
    success: 0/1 per episode.
    episode_return: summed reward per episode.
    length: policy steps per episode.

  Returns:
    {"episodes", "successes", "success_rate", "ci95": [low, high], "episode_return",
     "episode_length"}.
  """
  success = np.asarray(success, np.float64)
  n, k = int(success.size), int(round(float(success.sum())))
  low, high = wilson_interval(k, n)
  return {
      "episodes": n,
      "successes": k,
      "success_rate": k / n,
      "ci95": [low, high],
      "episode_return": float(np.mean(episode_return)),
      "episode_length": float(np.mean(length)),
  }


def overall(tasks: Mapping[str, Mapping[str, Any]]) -> Optional[dict[str, Any]]:
  """Pooled success over all evaluated tasks (None when there are none).

  The interval pools the episodes, so it is only meaningful with equal episodes per task.
  """
  if not tasks:
    return None
  n = sum(t["episodes"] for t in tasks.values())
  k = sum(t["successes"] for t in tasks.values())
  low, high = wilson_interval(k, n)
  return {"episodes": n, "successes": k, "success_rate": k / n, "ci95": [low, high],
          "mean_task_success_rate": float(np.mean([t["success_rate"] for t in tasks.values()]))}


def print_table(result: Mapping[str, Any], console=None) -> None:
  """Prints the per-task table of an evaluation result (see `__main__`) with rich.

  Args:
    result: the evaluation result dict, with "tasks", "incompatible" and "overall".
    console: a `rich.console.Console` (default: stdout).
  """
  from rich import console as rich_console  # pylint: disable=g-import-not-at-top
  from rich import table as rich_table  # pylint: disable=g-import-not-at-top

  console = console or rich_console.Console()
  table = rich_table.Table(title=f"{result['workdir']}  (checkpoint {result['checkpoint_step']}, "
                           f"trained on {result['trained_task']})")
  for name, justify in (("task", "left"), ("success", "right"), ("95% CI", "center"),
                        ("episodes", "right"), ("return", "right"), ("length", "right"),
                        ("videos", "right")):
    table.add_column(name, justify=justify)
  for name, row in result["tasks"].items():
    low, high = row["ci95"]
    table.add_row(name, f"{row['success_rate']:.3f}", f"[{low:.3f}, {high:.3f}]",
                  str(row["episodes"]), f"{row['episode_return']:.2f}",
                  f"{row['episode_length']:.1f}", str(len(row.get("videos", []))))
  total = result.get("overall")
  if total and len(result["tasks"]) > 1:
    low, high = total["ci95"]
    table.add_row("all (pooled)", f"{total['success_rate']:.3f}", f"[{low:.3f}, {high:.3f}]",
                  str(total["episodes"]), "", "", "", style="bold")
  console.print(table)
  for name, why in result.get("incompatible", {}).items():
    console.print(f"{name}: not evaluated, {why}", markup=False)


def write_json(result: Mapping[str, Any], path: str) -> None:
  """Writes `result` to `path` as indented JSON, creating the folder."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")
