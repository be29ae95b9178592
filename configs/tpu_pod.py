"""A TPU pod slice of 64 chips (v4-128: 32 GiB HBM per chip): the `7b` VLA, 4096 envs.

`placement.mode = "disaggregated"`: chips 0-15 simulate (16 env groups of 256, one per chip),
chips 16-31 run inference (data 4 x tensor 4), chips 32-63 learn (FSDP over 32). Every host of
the slice runs the same command; on Cloud TPU `jax.distributed` finds the other hosts itself:

    python -m dvla_jax.main --config=configs/tpu_pod.py --workdir=gs://BUCKET/tpu_pod

MJX's Warp backend (and with it the batch renderer) needs an NVIDIA GPU, so on TPU the sim
runs MJX's JAX backend (`env.impl = "jax"`), which does not render: `obs["image"]` is all
zeros and the policy acts on the instruction and proprioception. Pixel observations need GPU
sims (configs/gpu8.py, configs/multihost.py).

Checked without TPUs (tests/test_configs.py): the config check, the placement on 64 devices
and the memory plan (inference chips 13.4 GiB each, the fullest):

    python tools/plan_memory.py --config=configs/tpu_pod.py --devices=64 --device_memory_gib=32
"""

from dvla_jax.config import default_config


def get_config(arg: str = ""):
  if arg:
    raise ValueError(f"configs/tpu_pod.py: unknown arg {arg!r}; allowed: ''")
  config = default_config.get_config()
  config.pipeline = "async"
  config.env.task = "touch_cube"
  config.env.impl = "jax"
  config.env.num_envs = 4096
  config.env.image_size = 32
  config.env.episode_length = 16
  config.model.preset = "7b"
  config.model.dtype = "bfloat16"
  config.rl.rollout_length = 16
  config.rl.num_minibatches = 8  # 256 envs x 16 steps per slot: minibatches of 512.
  config.rl.lr = 2e-5
  config.rl.warmstart_steps = 2000
  config.sft.batch_size = 512
  config.sft.episodes = 4096
  config.swimlanes.env_groups = 16
  config.placement.mode = "disaggregated"
  config.placement.sim.devices = 16
  config.placement.actor.data = 4
  config.placement.actor.tensor = 4
  config.placement.learner.fsdp = 32
  config.train.iterations = 5000
  config.train.log_every = 10
  config.train.eval_every = 250
  config.train.eval_episodes = 1024
  config.train.checkpoint_every = 250
  return config
