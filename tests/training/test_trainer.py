"""End to end on the tiny config: train, stop, resume; the run continues from the checkpoint."""

import json
import os
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "configs"))
import demo  # noqa: E402  (a config file, imported by path)

from dvla_jax.training import builders  # noqa: E402
from dvla_jax.training import checkpoints  # noqa: E402
from dvla_jax.training import trainer  # noqa: E402


def _params(workdir, step):
  config = demo.get_config("tiny")
  comp = builders.build(config)
  abstract = jax.eval_shape(comp.init_train_state, jax.random.key(0))
  with checkpoints.Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
    state, meta = ckpt.restore(step, abstract)
  return state, meta


@pytest.fixture(scope="module")
def two_then_four(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  config = demo.get_config("tiny")
  config.train.iterations = 2
  first = trainer.train(config, workdir)
  state2, meta2 = _params(workdir, 2)
  config.train.iterations = 4
  second = trainer.train(config, workdir)
  return workdir, first, second, state2, meta2


def test_train_two_iterations_writes_everything(two_then_four):
  workdir, first, _, state2, meta2 = two_then_four
  assert first["step"] == 2
  assert int(state2.step) == 2
  assert meta2["env_steps"] == 2 * 4 * 8  # iterations x rollout_length x num_envs
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert any("eval/success_rate" in r for r in rows)
  assert any("learner/policy_loss" in r for r in rows)
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(workdir, "tb")))


def test_resume_continues_step_and_params(two_then_four):
  workdir, _, second, state2, _ = two_then_four
  assert second["step"] == 4
  state4, meta4 = _params(workdir, 4)
  assert int(state4.step) == 4
  assert meta4["env_steps"] == 4 * 4 * 8
  assert _max_abs_diff(state4.params, state2.params) > 0
  # The second run logged only iterations 3 and 4: a run that ignored the checkpoint would
  # log 1..4 again (and evaluate at 0 again).
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  steps = [r["step"] for r in rows if "learner/policy_loss" in r]
  assert steps == [1, 2, 3, 4]
  assert [r["step"] for r in rows if "eval/success_rate" in r].count(0) == 1


def _max_abs_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
