"""CPU demo: PPO fine-tunes a small VLA on the MJX task "touch the <colour> cube".

Run it (about 10 minutes on a 2-core CPU; measured numbers in README.md):

    python -m dvla_jax.main --flagfile=configs/demo.flags

or, for the seconds-long smoke configuration used by the tests:

    python -m dvla_jax.main --config=configs/demo.py:tiny --workdir=/tmp/dvla_tiny

`get_config(arg)` takes one of:
  ""      the demo as shipped: the `small` model, 128 envs; 800 behaviour-cloning steps
          on the scripted expert, then 30 PPO iterations.
  "tiny"  a seconds-long run: 8 envs, the `tiny` model, 2 iterations.
"""

from dvla_jax.training import default_config


def get_config(arg: str = ""):
  config = default_config.get_config()
  config.env.task = "touch_cube"
  config.env.num_envs = 128  # MJX Warp on CPU steps 128 worlds in about the time of 64.
  config.env.episode_length = 16
  config.model.preset = "small"
  config.rl.rollout_length = 16
  config.rl.lr = 3e-4
  config.rl.max_grad_norm = 5.0
  # Warm start: behaviour-clone the scripted expert for a few hundred steps, then PPO.
  config.rl.warmstart_steps = 800
  config.sft.batch_size = 128
  config.train.iterations = 30
  config.train.log_every = 2
  config.train.eval_every = 10
  config.train.eval_episodes = 256
  config.train.checkpoint_every = 10
  if arg == "tiny":
    config.env.num_envs = 8
    config.env.image_size = 32
    config.env.episode_length = 8
    config.model.preset = "tiny"
    config.rl.rollout_length = 4
    config.rl.num_minibatches = 2
    config.rl.update_epochs = 1
    config.train.iterations = 2
    config.rl.warmstart_steps = 0
    config.train.eval_every = 2
    config.train.eval_episodes = 8
    config.train.log_every = 1
    config.train.checkpoint_every = 1
  elif arg:
    raise ValueError(f"configs/demo.py: unknown arg {arg!r}; allowed: '' or 'tiny'")
  return config
