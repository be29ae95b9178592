"""Four hosts of eight GPUs (80 GB each, 32 in all): the `7b` VLA, 4096 envs at 64 px.

Every host runs the same command with its own process id, and `placement` describes one
host's eight GPUs (`dvla_jax.parallel.mesh`): GPUs 0-1 simulate and render the host's 1024
envs (2 env groups of 512), GPUs 2-3 run its inference (tensor 2), GPUs 4-7 learn. The
learner mesh joins the four hosts' learner GPUs along fsdp (FSDP over 16): each update learns
from one rollout slot of every host, and each new version is gathered across hosts and copied
to every host's actors. `experiments/launch_xm.py` launches the hosts as an XManager job group:

    python -m dvla_jax.main --config=configs/multihost.py --workdir=gs://BUCKET/multihost \\
        --coordinator_address=HOST0:1234 --num_processes=4 --process_id=0   # 1, 2, 3 elsewhere

Checked without GPUs (tests/test_configs.py): the config check, the placement on each host's
8 devices and the memory plan (learner GPUs 48.7 GiB each, the fullest; the gathered weight
snapshot is most of it):

    python tools/plan_memory.py --config=configs/multihost.py --devices=32 --processes=4 \\
        --device_memory_gib=80

The same code path (each process simulates and acts on its own devices, one learner mesh
across processes) trains on two CPU processes in tests/multihost; this config itself has not
run on GPUs.
"""

from dvla_jax.config import default_config


def get_config(arg: str = ""):
  if arg:
    raise ValueError(f"configs/multihost.py: unknown arg {arg!r}; allowed: ''")
  config = default_config.get_config()
  config.pipeline = "async"
  config.env.task = "touch_cube"
  config.env.num_envs = 1024  # Per host: 4096 in all.
  config.env.image_size = 64
  config.env.episode_length = 16
  config.model.preset = "7b"
  config.model.dtype = "bfloat16"
  config.rl.rollout_length = 16
  # A slot of 512 envs x 16 steps from each of 4 hosts per update: minibatches of 1024.
  config.rl.num_minibatches = 32
  config.rl.lr = 2e-5
  config.rl.warmstart_steps = 2000
  config.sft.batch_size = 512
  config.sft.episodes = 4096
  config.swimlanes.env_groups = 2
  config.placement.mode = "disaggregated"
  config.placement.sim.devices = 2
  config.placement.actor.tensor = 2
  config.placement.learner.fsdp = 4  # x 4 hosts: FSDP over 16.
  config.train.iterations = 5000
  config.train.log_every = 10
  config.train.eval_every = 250
  config.train.eval_episodes = 1024
  config.train.checkpoint_every = 250
  return config
