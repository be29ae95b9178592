"""End to end on the tiny config: train, stop, resume; the run continues from the checkpoint.

Also through `main` in subprocesses: SIGTERM checkpoints and exits 0, the next run resumes,
and a lane fault exits non-zero keeping the last good checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "configs"))
import demo  # noqa: E402  (a config file, imported by path)

from dvla_jax.programs import builders  # noqa: E402
from dvla_jax.training import checkpoints  # noqa: E402
from dvla_jax.training import trainer  # noqa: E402


def _params(workdir, step):
  config = demo.get_config("tiny")
  components = builders.build(config)
  abstract = jax.eval_shape(components.init_train_state, jax.random.key(0))
  with checkpoints.Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
    state, meta = ckpt.restore(step, abstract)
  return state, meta


@pytest.fixture(scope="module")
def two_then_four(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  config = demo.get_config("tiny")
  # Both runs share the compiled programs (resuming in a fresh process is the SIGTERM test's).
  components = builders.build(config)
  config.train.iterations = 2
  first = trainer.train(config, workdir, components=components)
  state2, meta2 = _params(workdir, 2)
  config.train.iterations = 4
  second = trainer.train(config, workdir, components=components)
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


def _rows(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _main(workdir, *overrides):
  root = os.path.join(os.path.dirname(__file__), "..", "..")
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.path.abspath(root),
             # Both runs compile the same programs: the second one reads them from disk.
             JAX_COMPILATION_CACHE_DIR=os.path.join(workdir, "..", "jax_cache"))
  args = [sys.executable, "-m", "dvla_jax.main", "--config=configs/demo.py:tiny",
          f"--workdir={workdir}", "--config.pipeline=async", "--config.swimlanes.env_groups=2",
          "--config.train.iterations=1000", "--config.train.eval_every=1000",
          "--config.train.log_every=1",
          "--verbosity=0",  # The resume's INFO line ("resumed from ...") is asserted on.
          *overrides]
  return subprocess.Popen(args, cwd=root, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def test_sigterm_checkpoints_and_exits_0_and_the_next_run_resumes(tmp_path):
  workdir = str(tmp_path / "run")
  proc = _main(workdir, "--config.train.checkpoint_every=1000")
  deadline = time.monotonic() + 600
  while not any(r.get("step", 0) >= 2 and "learner/version" in r for r in _rows(workdir)):
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    assert time.monotonic() < deadline, "no second iteration within 600s"
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 0, stderr[-3000:]
  with checkpoints.Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
    preempted_at = ckpt.latest_step()
  assert preempted_at is not None and preempted_at >= 2  # Only the SIGTERM save exists.

  # The next run resumes there; a fault after its first update exits non-zero and keeps
  # that update's checkpoint as the newest.
  proc = _main(workdir, "--config.train.checkpoint_every=1", "--config.testing.fault_lane=gradient",
               "--config.testing.fault_after=1")
  _, stderr = proc.communicate(timeout=600)
  assert proc.returncode != 0
  assert "gradient lane failed: InjectedFault" in stderr
  assert "resumed from" in stderr and f"at iteration {preempted_at}" in stderr
  with checkpoints.Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
    assert ckpt.latest_step() == preempted_at + 1
  logged = [r["step"] for r in _rows(workdir) if "learner/version" in r]
  assert logged[-1] == preempted_at + 1 and logged.count(preempted_at + 1) == 1


def test_warm_start_clones_the_expert_before_rl(tmp_path):
  config = demo.get_config("tiny")
  config.rl.warmstart_steps = 40
  config.sft.episodes = 8
  config.sft.batch_size = 16
  config.sft.lr = 3e-3
  config.train.iterations = 1
  rows = []
  components = builders.build(config)  # The warm start is not part of the components.
  trainer.train(config, str(tmp_path), progress_fn=lambda s, m: rows.append((s, dict(m))),
                components=components)
  losses = [m["warmstart/loss"] for _, m in rows if "warmstart/loss" in m]
  assert len(losses) == 4 and losses[-1] < losses[0]
  # The iteration-0 evaluation comes after the warm start: it scores the policy RL starts
  # from, and it is the only evaluation at iteration 0.
  evals = [i for i, (s, m) in enumerate(rows) if "eval/success_rate" in m]
  warm = [i for i, (s, m) in enumerate(rows) if "warmstart/loss" in m]
  assert evals[0] > warm[-1] and rows[evals[0]][0] == 0
  assert [rows[i][0] for i in evals].count(0) == 1
  # Without a warm start the same run's first update starts from other parameters.
  config.rl.warmstart_steps = 0
  cold = []
  trainer.train(config, str(tmp_path / "cold"), progress_fn=lambda s, m: cold.append(m),
                components=components)
  warm = [m for s, m in rows if "learner/policy_loss" in m][0]["learner/entropy"]
  cold_entropy = [m for m in cold if "learner/policy_loss" in m][0]["learner/entropy"]
  assert warm < cold_entropy - 0.1  # The cloned policy is sharper than the random one.
