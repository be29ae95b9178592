"""One GPU (80 GB, e.g. an H100): the `base` VLA (301M parameters), 1024 envs at 64 px.

Every plane on the one device (`placement.mode = "colocated"`): MJX Warp simulates and renders
two env groups of 512, the policy acts and learns on the same GPU, and the four-lane async
pipeline overlaps them. Run it (needs the CUDA build of jax, `make demo JAX=cuda`):

    python -m dvla_jax.main --config=configs/gpu1.py --workdir=runs/gpu1

Checked without a GPU (tests/test_configs.py): the config check, the placement on 1 device
and the memory plan (25.3 GiB on the device, bfloat16 compute):

    python tools/plan_memory.py --config=configs/gpu1.py --devices=1 --device_memory_gib=80
"""

from dvla_jax.config import default_config


def get_config(arg: str = ""):
  if arg:
    raise ValueError(f"configs/gpu1.py: unknown arg {arg!r}; allowed: ''")
  config = default_config.get_config()
  config.pipeline = "async"
  config.env.task = "touch_cube"
  config.env.num_envs = 1024
  config.env.image_size = 64
  config.env.episode_length = 16
  config.model.preset = "base"
  config.model.dtype = "bfloat16"
  config.rl.rollout_length = 16
  config.rl.num_minibatches = 16  # 512 envs x 16 steps per slot: minibatches of 512.
  config.rl.lr = 1e-4
  config.rl.warmstart_steps = 2000
  config.sft.batch_size = 512
  config.sft.episodes = 1024
  config.swimlanes.env_groups = 2
  config.placement.mode = "colocated"
  config.train.iterations = 2000
  config.train.log_every = 10
  config.train.eval_every = 100
  config.train.eval_episodes = 512
  config.train.checkpoint_every = 100
  return config
