"""Four hosts of eight GPUs (80 GB each, 32 in all): the `7b` VLA, 4096 envs at 64 px.

`placement.mode = "disaggregated"` over the 32 devices of the run (JAX numbers them host by
host): GPUs 0-7 simulate and render (8 env groups of 512), GPUs 8-15 run inference (data 2 x
tensor 4), GPUs 16-31 learn (FSDP over 16). Every host runs the same command with its own
process id; `experiments/launch_xm.py` launches them as an XManager job group:

    python -m dvla_jax.main --config=configs/multihost.py --workdir=gs://BUCKET/multihost \\
        --coordinator_address=HOST0:1234 --num_processes=4 --process_id=0   # 1, 2, 3 elsewhere

Checked without GPUs (tests/test_configs.py): the config check, the placement on 32 devices
and the memory plan (inference GPUs 14.5 GiB each, the fullest):

    python tools/plan_memory.py --config=configs/multihost.py --devices=32 --device_memory_gib=80

Not run anywhere yet: the lanes step every env group and feed every plane from one process,
so the trainer does not yet split its work over several processes (the two-process test,
tests/multihost, covers joining, the weight broadcast across processes and checkpoints).
"""

from dvla_jax.training import default_config


def get_config(arg: str = ""):
  if arg:
    raise ValueError(f"configs/multihost.py: unknown arg {arg!r}; allowed: ''")
  config = default_config.get_config()
  config.pipeline = "async"
  config.env.task = "touch_cube"
  config.env.num_envs = 4096
  config.env.image_size = 64
  config.env.episode_length = 16
  config.model.preset = "7b"
  config.model.dtype = "bfloat16"
  config.rl.rollout_length = 16
  config.rl.num_minibatches = 32  # 512 envs x 16 steps per slot: minibatches of 256.
  config.rl.lr = 2e-5
  config.rl.warmstart_steps = 2000
  config.sft.batch_size = 512
  config.sft.episodes = 4096
  config.swimlanes.env_groups = 8
  config.placement.mode = "disaggregated"
  config.placement.sim.devices = 8
  config.placement.actor.data = 2
  config.placement.actor.tensor = 4
  config.placement.learner.fsdp = 16
  config.train.iterations = 5000
  config.train.log_every = 10
  config.train.eval_every = 250
  config.train.eval_episodes = 1024
  config.train.checkpoint_every = 250
  return config
