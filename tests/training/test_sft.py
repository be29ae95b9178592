"""Supervised warm-start on the tiny config: it learns, checkpoints, resumes, and RL starts from it.

One short SFT run (module fixture) records expert demonstrations in-process, evaluates the
untrained policy, trains, and evaluates again; the RL trainer then starts from its workdir
with `rl.init_from`. The env and policy programs are built once and shared by every run.
No test changes the fixture's workdir, so they may run in any order (or on xdist workers).
"""

import os
import shutil
import sys

from flax import nnx
import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "configs"))
import demo  # noqa: E402  (a config file, imported by path)

from dvla_jax import models  # noqa: E402
from dvla_jax.config import config_check  # noqa: E402
from dvla_jax.programs import builders  # noqa: E402
from dvla_jax.training import checkpoints  # noqa: E402
from dvla_jax.training import demo_rows  # noqa: E402
from dvla_jax.training import sft  # noqa: E402
from dvla_jax.training import trainer  # noqa: E402

STEPS = 150


def _sft_config():
  config = demo.get_config("tiny")
  config.mode = "sft"
  config.env.num_envs = 16
  config.sft.episodes = 64
  config.sft.holdout_episodes = 16
  config.sft.expert_noise = 0.3
  config.sft.lr = 3e-3
  config.sft.label_sigma = 0.0
  config.sft.batch_size = 64
  config.train.iterations = STEPS
  config.train.log_every = 50
  config.train.eval_every = STEPS
  config.train.checkpoint_every = STEPS
  config.train.eval_episodes = 32
  config_check.validate(config)
  return config


class _Rows:
  def __init__(self):
    self.rows = []

  def __call__(self, step, metrics):
    self.rows.append((step, dict(metrics)))

  def at(self, step, key):
    return [m[key] for s, m in self.rows if s == step and key in m]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  config = _sft_config()
  components = builders.build(config)
  workdir = str(tmp_path_factory.mktemp("sft"))
  rows = _Rows()
  result = sft.train(config, workdir, progress_fn=rows, components=components)
  return config, components, workdir, rows, result


def test_sft_lowers_the_held_out_token_loss(run):
  _, _, _, rows, result = run
  (before,), (after,) = rows.at(0, "sft/holdout_loss"), rows.at(STEPS, "sft/holdout_loss")
  assert before > 5.0  # about log(256): the untrained policy knows nothing
  print(f"held-out token loss before {before:.3f}, after {after:.3f}")
  assert after < 0.8 * before, (before, after)
  assert result["sft/holdout_loss"] == after
  assert rows.at(STEPS, "sft/holdout_accuracy")[0] > 0.1
  train_losses = [m["sft/loss"] for _, m in rows.rows if "sft/loss" in m]
  assert len(train_losses) == STEPS // 50 and train_losses[-1] < train_losses[0]


def test_sft_raises_the_success_rate(run):
  _, _, _, rows, result = run
  # The argmax policy: an untrained one drives to a wall every time, so any success is learnt.
  (before,), (after,) = (rows.at(0, "eval/greedy_success_rate"),
                         rows.at(STEPS, "eval/greedy_success_rate"))
  print(f"greedy success rate before {before:.3f}, after {after:.3f}")
  assert after > before + 0.04, (before, after)
  assert result["eval/episodes"] == 32 and result["step"] == STEPS


def test_checkpoint_has_the_rl_items(run):
  config, components, workdir, _, _ = run
  abstract = jax.eval_shape(components.init_train_state, jax.random.key(0))
  with checkpoints.Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
    assert ckpt.all_steps() == [STEPS]
    state, meta = ckpt.restore(STEPS, abstract)
    params = ckpt.restore_params(STEPS, abstract.params)
  assert meta["mode"] == "sft" and meta["iteration"] == STEPS
  assert meta["config"]["sft"]["episodes"] == config.sft.episodes
  assert int(state.step) == STEPS
  _assert_same(params, state.params)
  assert os.path.exists(os.path.join(workdir, demo_rows.DEMOS_FILE))


def test_rl_starts_from_the_sft_policy(run, tmp_path):
  config, components, workdir, sft_rows, _ = run
  rl = _sft_config()
  rl.mode = "rl"
  rl.rl.init_from = workdir
  rl.train.iterations = 1
  rl.train.eval_every = 1
  rl.train.checkpoint_every = 1
  rl.swimlanes.trace = False
  rows = _Rows()
  rl_dir = str(tmp_path / "rl")
  trainer.train(rl, rl_dir, progress_fn=rows, components=components)
  # RL's first evaluation scores the SFT policy on the same episodes SFT evaluated on.
  for key in ("eval/success_rate", "eval/greedy_success_rate", "eval/episode_return"):
    assert rows.at(0, key) == sft_rows.at(STEPS, key)
  with checkpoints.Checkpointer(os.path.join(rl_dir, "checkpoints")) as ckpt:
    assert ckpt.all_steps() == [1]  # its own iteration count, from 0
  # An RL workdir is not an SFT workdir.
  with pytest.raises(config_check.ConfigError, match="holds an RL checkpoint"):
    sft.train(_sft_config(), rl_dir, progress_fn=_Rows(), components=components)


def test_warm_start_path_errors_are_one_line(tmp_path):
  for path in (str(tmp_path / "missing"), str(tmp_path)):
    with pytest.raises(config_check.ConfigError, match="rl.init_from") as err:
      checkpoints.restore_policy_params(path, None)
    assert "\n" not in str(err.value)


def test_resume_continues_from_the_checkpoint(run, tmp_path):
  _, components, workdir, _, _ = run
  # On a copy: the other tests read the original run's checkpoint.
  workdir = shutil.copytree(workdir, tmp_path / "resumed")
  config = _sft_config()
  config.train.iterations = STEPS + 10
  rows = _Rows()
  result = sft.train(config, str(workdir), progress_fn=rows, components=components)
  assert result["step"] == STEPS + 10
  assert not rows.at(0, "eval/success_rate")  # no second evaluation of the untrained policy
  assert rows.at(STEPS + 10, "sft/loss")


def _assert_same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_label_smoothing_targets_a_gaussian_around_the_demonstrated_bin():
  model_config = models.get_preset("tiny")
  graphdef, params = nnx.split(models.VLA(model_config, rngs=nnx.Rngs(0)))
  obs = model_config.fake_obs(2)
  tokens = np.array([[[0, 100, 255]] * model_config.action_horizon] * 2, np.int32)
  batch = {"obs": obs, "tokens": tokens}
  hard, m_hard = sft.token_loss(graphdef, params, batch)
  smooth, m_smooth = sft.token_loss(graphdef, params, batch, label_sigma=4.0)
  logits, _ = nnx.merge(graphdef, params)(obs)
  logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
  bins = np.arange(model_config.num_bins)
  target = np.exp(-0.5 * ((bins - np.asarray(tokens)[..., None]) / 4.0) ** 2)
  target /= target.sum(-1, keepdims=True)
  np.testing.assert_allclose(smooth, -(target * logp).sum(-1).mean(), rtol=1e-5)
  # The NLL of the demonstrated bin is reported either way, and is the hard loss.
  np.testing.assert_allclose(m_smooth["nll"], hard, rtol=1e-6)
  np.testing.assert_allclose(m_hard["nll"], hard, rtol=1e-6)
  assert float(smooth) != float(hard)
