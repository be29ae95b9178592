"""Eight GPUs of one host (80 GB each): the `1b` VLA, 2048 envs at 64 px, planes apart.

`placement.mode = "disaggregated"`: GPUs 0-1 simulate and render (4 env groups of 512, two
per GPU), GPUs 2-3 run inference (data parallel, each holding the whole policy and its
incoming weight buffer), GPUs 4-7 learn (FSDP over 4); the distribution lane copies each new
version from the learner's FSDP shards to the actor replicas. Run it (CUDA build of jax):

    python -m dvla_jax.main --config=configs/gpu8.py --workdir=runs/gpu8

`get_config("runlocal")` keeps this placement and pipeline with the `tiny` model and 8 envs,
for 8 fake CPU devices (the tests run it end to end):

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \\
        python -m dvla_jax.main --config=configs/gpu8.py:runlocal --workdir=/tmp/gpu8_local

Checked without GPUs (tests/test_configs.py): the config check, the placement on 8 devices
and the memory plan (learner GPUs 11.4 GiB each, the fullest):

    python tools/plan_memory.py --config=configs/gpu8.py --devices=8 --device_memory_gib=80
"""

from dvla_jax.config import default_config


def get_config(arg: str = ""):
  config = default_config.get_config()
  config.pipeline = "async"
  config.env.task = "touch_cube"
  config.env.num_envs = 2048
  config.env.image_size = 64
  config.env.episode_length = 16
  config.model.preset = "1b"
  config.model.dtype = "bfloat16"
  config.rl.rollout_length = 16
  config.rl.num_minibatches = 16  # 512 envs x 16 steps per slot: minibatches of 512.
  config.rl.lr = 5e-5
  config.rl.warmstart_steps = 2000
  config.sft.batch_size = 512
  config.sft.episodes = 2048
  config.swimlanes.env_groups = 4
  config.placement.mode = "disaggregated"
  config.placement.sim.devices = 2
  config.placement.actor.data = 2
  config.placement.learner.fsdp = 4
  config.train.iterations = 2000
  config.train.log_every = 10
  config.train.eval_every = 100
  config.train.eval_episodes = 512
  config.train.checkpoint_every = 100
  if arg == "runlocal":
    config.env.num_envs = 8
    config.swimlanes.env_groups = 2  # One per sim device.
    config.env.image_size = 32
    config.env.episode_length = 4
    config.model.preset = "tiny"
    config.model.dtype = "float32"
    config.rl.rollout_length = 4
    config.rl.num_minibatches = 1
    config.rl.update_epochs = 1
    config.rl.warmstart_steps = 0
    config.train.iterations = 2
    config.train.log_every = 1
    config.train.eval_every = 2
    config.train.eval_episodes = 4
    config.train.checkpoint_every = 2
  elif arg:
    raise ValueError(f"configs/gpu8.py: unknown arg {arg!r}; allowed: '' or 'runlocal'")
  return config
