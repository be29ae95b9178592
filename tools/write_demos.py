r"""Writes scripted-expert demonstrations of a task to disk (format: `dvla_jax.training.demos`).

    PYTHONPATH=. python tools/write_demos.py --task=touch_cube --episodes=64 --out=/tmp/demos

Runs `--num_worlds` episodes at a time and prints the expert's success rate. A bad value
(unknown task, episodes < 1, image size out of range) prints one line and exits with status 2.
"""

import dataclasses
import sys
from typing import Sequence

from absl import app
from absl import flags

_TASK = flags.DEFINE_string("task", None, "Registered task name (python -m dvla_jax.envs --list).")
_EPISODES = flags.DEFINE_integer("episodes", None, "Number of episodes to record.")
_OUT = flags.DEFINE_string("out", None, "Output directory (created).")
_NUM_WORLDS = flags.DEFINE_integer("num_worlds", 16, "Episodes simulated in parallel.")
_SEED = flags.DEFINE_integer("seed", 0, "Layout and instruction seed.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 64, "Camera resolution in pixels.")
_EPISODE_LENGTH = flags.DEFINE_integer("episode_length", 0,
                                       "Policy steps per episode; 0 keeps the task default.")
flags.mark_flags_as_required(["task", "episodes", "out"])

_USAGE_ERROR = 2


def main(argv: Sequence[str]) -> None:
  del argv
  # Heavy imports after flag parsing, so that `--help` and flag errors stay fast.
  from dvla_jax import envs  # pylint: disable=g-import-not-at-top
  from dvla_jax.training import demos  # pylint: disable=g-import-not-at-top

  try:
    envs.check_task(_TASK.value)
    config = envs.EnvConfig(image_size=_IMAGE_SIZE.value)
    if _EPISODE_LENGTH.value:
      config = dataclasses.replace(config, episode_length=_EPISODE_LENGTH.value)
    meta = demos.write_demos(_OUT.value, _TASK.value, _EPISODES.value,
                             num_worlds=_NUM_WORLDS.value, seed=_SEED.value, env_config=config)
  except (ValueError, KeyError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(_USAGE_ERROR)
  print(f"wrote {meta['num_episodes']} episodes of {meta['task']} to {_OUT.value} "
        f"({len(meta['shards'])} shards); expert success rate {meta['success_rate']:.2f}")


if __name__ == "__main__":
  app.run(main)
