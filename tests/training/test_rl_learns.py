"""RL learns: PPO raises a fresh policy's evaluation success on the real touch_cube task.

The regression guard of the learner, in the spirit of brax's `train_test.py` (a tiny task
must reach a threshold): a `tiny` VLA starts from random weights, whose argmax policy never
touches a cube, and 40 PPO iterations on 64 envs (potential-based shaping on top of the success
reward, first-episode slots, chunk ratios) must make it succeed on fixed-seed evaluation
episodes. About 2 minutes on the 2-core CPU.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "configs"))
import demo  # noqa: E402  (a config file, imported by path)

from dvla_jax.training import trainer  # noqa: E402

ITERATIONS = 40


def _config():
  config = demo.get_config()
  config.model.preset = "tiny"
  config.env.num_envs = 64
  config.env.reward_shaping = 1.0
  config.rl.warmstart_steps = 0
  config.rl.lr = 1e-3
  config.rl.critic_warmup_iterations = 2
  config.rl.target_kl = 0.2
  config.train.iterations = ITERATIONS
  config.train.eval_every = ITERATIONS
  config.train.eval_episodes = 128
  config.train.checkpoint_every = ITERATIONS
  config.train.log_every = 10
  config.swimlanes.trace = False
  return config


def test_ppo_raises_success_from_scratch(tmp_path):
  rows = []
  trainer.train(_config(), str(tmp_path), progress_fn=lambda s, m: rows.append((s, dict(m))))
  evals = {s: m for s, m in rows if "eval/success_rate" in m}
  start, end = evals[0], evals[ITERATIONS]
  print({k: (start[k], end[k]) for k in ("eval/success_rate", "eval/greedy_success_rate",
                                         "eval/episode_return")})
  # Random weights: the argmax policy barely moves, sampling touches the named cube by chance.
  assert start["eval/greedy_success_rate"] <= 0.02 and start["eval/success_rate"] < 0.08
  # Measured 0.0 -> 0.24 (greedy) and 0.04 -> 0.11 (sampled) on 128 fixed episodes.
  assert end["eval/greedy_success_rate"] >= 0.12
  assert end["eval/success_rate"] - start["eval/success_rate"] >= 0.04
  assert end["eval/episode_return"] > start["eval/episode_return"] + 0.05
