"""Which task each world runs next in a multi-task run: uniform, or weighted by learnability.

With a sparse success reward, a task the policy always solves or always fails gives the
policy gradient nothing: every episode's advantage is about zero. SimpleVLA-RL drops such
GRPO groups after the fact (dynamic sampling); `TaskCurriculum` acts before the rollout,
giving more worlds to the tasks whose outcome is still uncertain. A task's weight is its
learnability p (1 - p) (Tzannetos et al. 2023, "Proximal Curriculum"; Rutherford et al. 2024,
"No Regrets"), p being its recent rollout success rate, and a share `mix` of the worlds stays
spread evenly, so that every task keeps being measured and a task at 0 can be noticed once it
starts to succeed.

p is estimated from decayed counts of the first episodes of recent rollout slots (the
`rollout/<task>/episodes` and `rollout/<task>/success_rate` metrics of each update, see
`programs/rollout_metrics.py`), with a Beta(1, 1) prior: a task not yet seen counts as 0.5.
The counts are host state, not checkpointed: a resumed run starts again from the prior.

Pure numpy; thread-safe (the gradient lane observes while the sampling lane allocates).
"""

import threading
from typing import Any, Mapping, Optional, Sequence

import numpy as np

MODES = ("uniform", "learnability")
DECAY = 0.5  # Weight of the counts so far at each update: about the last two updates count.


def allocate(shares: np.ndarray, num_layouts: int, rng: np.random.Generator) -> np.ndarray:
  """Task index per layout, int32 [num_layouts]: each task as close to its share as whole
  layouts allow (largest remainders), in a random order."""
  shares = np.asarray(shares, np.float64)
  exact = shares / shares.sum() * num_layouts
  counts = np.floor(exact).astype(np.int64)
  short = num_layouts - int(counts.sum())
  if short:
    counts[np.argsort(-(exact - counts), kind="stable")[:short]] += 1
  return rng.permutation(np.repeat(np.arange(len(shares), dtype=np.int32), counts))


class TaskCurriculum:
  """Per-task success estimates from the updates' metrics, and the share of worlds per task.

  Attributes:
    task_names: the run's tasks, in `envs.resolve_tasks(env.task)` order.
    mode: "uniform" (every task as often; `tasks` returns None) or "learnability".
    mix: share of the worlds spread evenly whatever the weights.
  """

  def __init__(self, task_names: Sequence[str], mode: str = "uniform", mix: float = 0.25):
    if mode not in MODES:
      raise ValueError(f"task sampling {mode!r}; allowed: {', '.join(MODES)}")
    if not 0.0 <= mix <= 1.0:
      raise ValueError(f"task sampling mix {mix}; allowed: 0 <= mix <= 1")
    self.task_names = tuple(task_names)
    self.mode = mode
    self.mix = mix
    self._wins = np.zeros(len(self.task_names))
    self._episodes = np.zeros(len(self.task_names))
    self._pending: list[dict[str, Any]] = []
    self._lock = threading.Lock()

  @property
  def active(self) -> bool:
    """Whether worlds are assigned tasks by weight (more than one task, not uniform)."""
    return self.mode != "uniform" and len(self.task_names) > 1

  def keys(self) -> list[str]:
    """The metric keys `observe` reads."""
    return [f"rollout/{name}/{what}" for name in self.task_names
            for what in ("episodes", "success_rate")]

  def observe(self, metrics: Mapping[str, Any]) -> None:
    """Queues an update's `rollout/<task>/...` metrics (host or device scalars; device ones
    are read once they are ready, so the caller never waits for the update here)."""
    if not self.active:
      return
    wanted = {k: metrics[k] for k in self.keys() if k in metrics}
    if wanted:
      with self._lock:
        self._pending.append(wanted)

  def _fold(self, wait: bool) -> None:
    """Folds the queued metrics that are ready (all of them with `wait`) into the counts."""
    with self._lock:
      while self._pending:
        head = self._pending[0]
        ready = all(getattr(v, "is_ready", lambda: True)() for v in head.values())
        if not (ready or wait):
          break
        self._pending.pop(0)
        for i, name in enumerate(self.task_names):
          episodes = float(head.get(f"rollout/{name}/episodes", 0.0))
          rate = float(head.get(f"rollout/{name}/success_rate", 0.0))
          self._episodes[i] = DECAY * self._episodes[i] + episodes
          self._wins[i] = DECAY * self._wins[i] + rate * episodes

  def success(self, wait: bool = False) -> np.ndarray:
    """Estimated success rate per task (posterior mean under a Beta(1, 1) prior)."""
    self._fold(wait)
    with self._lock:
      return (self._wins + 1.0) / (self._episodes + 2.0)

  def shares(self, wait: bool = False) -> np.ndarray:
    """Share of the worlds per task: `mix` evenly, the rest in proportion to p (1 - p)."""
    n = len(self.task_names)
    if not self.active:
      return np.full(n, 1.0 / n)
    p = self.success(wait)
    weight = p * (1.0 - p)
    return self.mix / n + (1.0 - self.mix) * weight / weight.sum()

  def tasks(self, num_worlds: int, share: int, rng: np.random.Generator
            ) -> Optional[np.ndarray]:
    """Task index per world, int32 [num_worlds], constant over each block of `share` worlds
    (GRPO groups); None when uniform (the env's own turn-taking then applies)."""
    if not self.active:
      return None
    per_layout = allocate(self.shares(), num_worlds // share, rng)
    return np.repeat(per_layout, share)

  def metrics(self) -> dict[str, float]:
    """`curriculum/<task>/share` and `curriculum/<task>/success` (the estimate) per task."""
    if not self.active:
      return {}
    shares, p = self.shares(), self.success()
    out = {}
    for i, name in enumerate(self.task_names):
      out[f"curriculum/{name}/share"] = float(shares[i])
      out[f"curriculum/{name}/success"] = float(p[i])
    return out
