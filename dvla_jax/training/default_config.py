"""The full configuration tree with defaults; config files start from `get_config()`.

Every field is documented here, next to its default. `dvla_jax.training.config_check`
holds the allowed values and is run by `main` before anything is compiled.

Fields:
  seed: base PRNG seed; every random stream is `fold_in(seed, purpose)`.
  mode: "rl" (PPO fine-tuning).
  pipeline: "sync" (one rollout, then one update, repeated).

  env.task: a task name from the registry (`python -m dvla_jax.envs --list`).
  env.num_envs: parallel environments in one batch (N).
  env.episode_length: policy steps per episode (each step executes one action chunk).
  env.image_size: square camera resolution in pixels (32..128).
  env.impl: MJX implementation, "warp" (fast, renders) or "jax".

  model.preset: size preset (`tiny`, `small`, ...); see `dvla_jax.models`.
  model.action_horizon: H, steps per action chunk (0 = the preset's).
  model.temperature: sampling temperature of the action tokens during rollouts.

  rl.algo: "ppo".
  rl.rollout_length: T, policy steps per env per iteration.
  rl.lr: Adam learning rate.
  rl.gamma, rl.gae_lambda: discount and GAE lambda.
  rl.clip_eps: PPO ratio clip.
  rl.value_clip_eps: clip of the value update (0 disables value clipping).
  rl.vf_coef, rl.ent_coef: loss weights of the value loss and entropy bonus.
  rl.update_epochs, rl.num_minibatches: passes over the rollout and minibatches per pass.
  rl.max_grad_norm: global gradient-norm clip.
  rl.reward_scale: multiplies rewards before GAE.

  train.iterations: rollout+update iterations in total (resume continues to this).
  train.log_every: iterations between metric writes.
  train.eval_every: iterations between evaluations (also evaluated at 0 and at the end).
  train.eval_episodes: fresh episodes per evaluation (a multiple of env.num_envs is fastest).
  train.checkpoint_every: iterations between checkpoints (also saved at the end).
  train.keep_checkpoints: how many checkpoints to keep.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.mode = "rl"
  config.pipeline = "sync"

  config.env = ml_collections.ConfigDict()
  config.env.task = "touch_cube"
  config.env.num_envs = 128
  config.env.episode_length = 16
  config.env.image_size = 32
  config.env.impl = "warp"

  config.model = ml_collections.ConfigDict()
  config.model.preset = "small"
  config.model.action_horizon = 0
  config.model.temperature = 1.0

  config.rl = ml_collections.ConfigDict()
  config.rl.algo = "ppo"
  config.rl.rollout_length = 16
  config.rl.lr = 3e-4
  config.rl.gamma = 0.95
  config.rl.gae_lambda = 0.9
  config.rl.clip_eps = 0.2
  config.rl.value_clip_eps = 0.2
  config.rl.vf_coef = 0.5
  config.rl.ent_coef = 0.003
  config.rl.update_epochs = 2
  config.rl.num_minibatches = 4
  config.rl.max_grad_norm = 1.0
  config.rl.reward_scale = 1.0

  config.train = ml_collections.ConfigDict()
  config.train.iterations = 200
  config.train.log_every = 5
  config.train.eval_every = 25
  config.train.eval_episodes = 64
  config.train.checkpoint_every = 25
  config.train.keep_checkpoints = 2
  return config
