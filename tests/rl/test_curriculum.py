"""Task sampling by learnability: the estimates, the shares and the worlds' tasks."""

import numpy as np
import pytest

from dvla_jax.rl import curriculum

NAMES = ("solved", "half", "rare", "never")


def _metrics(rates, episodes=40):
  out = {}
  for name, rate in zip(NAMES, rates, strict=True):
    out[f"rollout/{name}/episodes"] = float(episodes)
    out[f"rollout/{name}/success_rate"] = float(rate)
  return out


def test_allocate_matches_shares_with_whole_layouts():
  rng = np.random.default_rng(0)
  tasks = curriculum.allocate(np.array([0.5, 0.3, 0.2]), 10, rng)
  assert np.bincount(tasks, minlength=3).tolist() == [5, 3, 2]
  # Remainders go to the largest fractions: 7 layouts of [0.5, 0.3, 0.2] -> 3.5, 2.1, 1.4.
  assert np.bincount(curriculum.allocate(np.array([0.5, 0.3, 0.2]), 7, rng)).tolist() == [4, 2, 1]


def test_learnability_favours_uncertain_tasks():
  cur = curriculum.TaskCurriculum(NAMES, "learnability", mix=0.2)
  np.testing.assert_allclose(cur.shares(), 0.25)  # The prior: every task at 0.5.
  cur.observe(_metrics([1.0, 0.5, 0.1, 0.0]))
  p = cur.success(wait=True)
  assert p[0] > 0.95 and p[3] < 0.05 and abs(p[1] - 0.5) < 0.01
  shares = cur.shares()
  assert shares.sum() == pytest.approx(1.0)
  assert shares[1] > shares[2] > shares[0] and shares[2] > shares[3]
  assert shares.min() >= 0.2 / 4  # The even share never goes away.
  tasks = cur.tasks(64, 4, np.random.default_rng(1))
  assert tasks.shape == (64,)
  blocks = tasks.reshape(16, 4)
  assert (blocks == blocks[:, :1]).all()  # GRPO groups keep one task.
  counts = np.bincount(blocks[:, 0], minlength=4)
  assert counts[1] == counts.max() and counts.sum() == 16
  metrics = cur.metrics()
  assert metrics["curriculum/half/share"] == pytest.approx(shares[1])


def test_estimates_follow_the_policy():
  cur = curriculum.TaskCurriculum(NAMES, "learnability")
  cur.observe(_metrics([0.0, 0.0, 0.0, 0.0]))
  cur.success(wait=True)
  for _ in range(4):  # "never" starts to succeed: within a few updates it is the favourite.
    cur.observe(_metrics([0.0, 0.0, 0.0, 0.5]))
  assert int(np.argmax(cur.shares(wait=True))) == 3


def test_uniform_and_single_task_leave_the_turns_alone():
  rng = np.random.default_rng(0)
  assert curriculum.TaskCurriculum(NAMES, "uniform").tasks(8, 1, rng) is None
  single = curriculum.TaskCurriculum(["only"], "learnability")
  assert not single.active and single.tasks(8, 1, rng) is None and single.metrics() == {}
  with pytest.raises(ValueError, match="allowed: uniform, learnability"):
    curriculum.TaskCurriculum(NAMES, "hardest")


def test_device_metrics_are_read_once_ready():
  class Pending(float):
    done = False

    def is_ready(self):
      return self.done

  cur = curriculum.TaskCurriculum(NAMES, "learnability")
  value = Pending(40.0)
  metrics = _metrics([1.0, 1.0, 1.0, 1.0])
  metrics["rollout/solved/episodes"] = value
  cur.observe(metrics)
  np.testing.assert_allclose(cur.success(), 0.5)  # Not ready: not read, nothing blocks.
  value.done = True
  assert cur.success()[0] > 0.95
