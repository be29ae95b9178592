"""GRPO runs in both pipelines: the sync loop and the four async lanes, through the trainer."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "configs"))
import demo  # noqa: E402  (a config file, imported by path)

from dvla_jax.programs import builders  # noqa: E402
from dvla_jax.training import trainer  # noqa: E402


@pytest.mark.parametrize("pipeline", ["sync", "async"])
def test_grpo_trains_in_each_pipeline(tmp_path, pipeline):
  config = demo.get_config("tiny")
  config.pipeline = pipeline
  config.swimlanes.env_groups = 2 if pipeline == "async" else 1
  config.rl.algo = "grpo"
  config.rl.group_size = 2
  config.rl.num_minibatches = 1
  config.rl.rollout_length = config.env.episode_length  # Every env finishes its episode.
  config.train.iterations = 3
  config.train.eval_every = 3
  config.swimlanes.trace = False
  rows = []
  comp = builders.build(config)
  result = trainer.train(config, str(tmp_path), progress_fn=lambda s, m: rows.append((s, m)),
                         components=comp)
  learner = [m for _, m in rows if "learner/groups_kept" in m]
  assert result["step"] == 3 and len(learner) == 3
  assert all(0.0 <= m["learner/groups_kept"] <= 1.0 for m in learner)
  assert all("learner/value_loss" not in m for m in learner)  # No critic.
  assert all(m["learner/skipped_updates"] == 0 for m in learner)
