"""CPU demo: PPO fine-tunes a small VLA on the MJX task "touch the <colour> cube".

Run it (about 7.5 minutes on an idle 2-core CPU; measured numbers in README.md):

    python -m dvla_jax.main --flagfile=configs/demo.flags

or, for the seconds-long smoke configuration used by the tests:

    python -m dvla_jax.main --config=configs/demo.py:tiny --workdir=/tmp/dvla_tiny

`get_config(arg)` takes one of:
  ""      the demo as shipped: the `small` model, 128 envs, 8-step episodes; 2000
          behaviour-cloning steps on 2048 rows of the scripted expert's demonstrations, then
          60 PPO iterations on each env's first episode per slot.
  "tiny"  a seconds-long run: 8 envs, the `tiny` model, 2 iterations.
"""

from dvla_jax.config import default_config


def get_config(arg: str = ""):
  config = default_config.get_config()
  config.env.task = "touch_cube"
  config.env.num_envs = 128  # MJX Warp on CPU steps 128 worlds in about the time of 64.
  # The expert needs 2 steps; 8 leave the policy room to correct itself.
  config.env.episode_length = 8
  # The reward is the sparse success reward (env.reward_shaping = 0): potential-based shaping
  # towards the named cube measured no better here (README, "What made RL work").
  config.model.preset = "small"
  # PPO on each env's first episode of every slot (one episode per env and slot).
  config.rl.rollout_length = 8
  config.rl.episodic_slots = True
  config.rl.lr = 1e-4
  config.rl.critic_warmup_iterations = 3
  config.rl.target_kl = 0.1
  # Warm start: behaviour-clone demonstrations of the scripted expert (smoothed labels), then
  # PPO.
  # Cloning leaves about one episode in eight failed (eval 0.87); PPO then removes about two
  # thirds of the failures (README, "CPU demo").
  config.rl.warmstart_steps = 2000
  config.sft.episodes = 2048
  config.sft.batch_size = 128
  config.sft.label_sigma = 4.0
  config.train.iterations = 60
  config.train.log_every = 5
  config.train.eval_every = 30
  config.train.eval_episodes = 256
  config.train.checkpoint_every = 30
  if arg == "tiny":
    config.env.num_envs = 8
    config.env.image_size = 32
    config.env.episode_length = 8
    # Smoke runs of a few iterations rarely see a success; the (potential-based) shaping gives
    # every update a gradient, and episodes run on across the short slots.
    config.env.reward_shaping = 1.0
    config.model.preset = "tiny"
    config.rl.rollout_length = 4
    config.rl.episodic_slots = False
    config.rl.num_minibatches = 2
    config.rl.update_epochs = 1
    config.rl.critic_warmup_iterations = 0  # Two iterations: both update the policy.
    config.train.iterations = 2
    config.rl.warmstart_steps = 0
    config.train.eval_every = 2
    config.train.eval_episodes = 8
    config.train.log_every = 1
    config.train.checkpoint_every = 1
  elif arg:
    raise ValueError(f"configs/demo.py: unknown arg {arg!r}; allowed: '' or 'tiny'")
  return config
