r"""Evaluates a trained run: per-task success rates with 95% intervals, a table, JSON, videos.

    python -m dvla_jax.evaluate --workdir=runs/demo
    python -m dvla_jax.evaluate --workdir=runs/goal --suite=goal --episodes=32 --videos=2 \
        --out=runs/goal/eval/goal.json

The policy is restored from the newest checkpoint in `--workdir` (or `--step`), with the model
rebuilt from the run's config saved in the checkpoint. Without `--suite` or `--tasks` it is
evaluated on the tasks it trained on (its `env.task`: one task, a suite, or a list). A task
whose observations or actions do not fit the model is reported in one line and skipped.
Videos replay a few episodes per task at `--video_size` pixels (0: the observation frames,
upscaled) as GIF, or MP4 when imageio-ffmpeg is installed.

Tasks registered by modules of your own (`env.import_tasks`, see `dvla_jax/envs/custom.py`)
are imported from the run's `config.json`, and from `--import_tasks`.

Bad input (no checkpoint in the workdir, an unknown suite or task, an impossible number, no
task that fits the checkpoint) prints one line per problem to stderr and exits with status 2.
"""

import json
import os
import sys
from typing import NoReturn, Sequence

from absl import app
from absl import flags
from absl import logging

from dvla_jax.evaluate import paths

_USAGE_ERROR = 2

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory with checkpoints/ (required).")
_SUITE = flags.DEFINE_string("suite", "", "Evaluate every task of this suite: spatial, object, "
                             "goal or long.")
_TASKS = flags.DEFINE_list("tasks", [], "Comma-separated task names (instead of --suite).")
_EPISODES = flags.DEFINE_integer("episodes", 16, "Episodes per task.")
_VIDEOS = flags.DEFINE_integer("videos", 2, "Episodes per task written as videos.")
_VIDEO_SIZE = flags.DEFINE_integer(
    "video_size", 128, "Camera size of the videos (16..256); 0 upscales the observations.")
_VIDEO_FORMAT = flags.DEFINE_enum("video_format", "auto", ["auto", "gif", "mp4"],
                                  "auto: mp4 if imageio-ffmpeg is installed, else gif.")
_VIDEO_DIR = flags.DEFINE_string("video_dir", "", "Video folder (default WORKDIR/eval/videos).")
_OUT = flags.DEFINE_string("out", "", "JSON results file (default WORKDIR/eval/results.json).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_ACTIONS = flags.DEFINE_enum("actions", "sample", ["sample", "greedy"],
                             "sample at the run's model.temperature, or take the argmax.")
_NUM_ENVS = flags.DEFINE_integer("num_envs", 0, "Worlds per env batch (0: the run's).")
_EPISODE_LENGTH = flags.DEFINE_integer("episode_length", 0,
                                       "Episode limit in policy steps (0: the run's).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the layouts and sampled actions.")
_IMPORT_TASKS = flags.DEFINE_string(
    "import_tasks", "", "Task modules to import (comma-separated files or module names), in "
    "addition to the run's own env.import_tasks (read from WORKDIR/config.json).")


def _import_tasks(workdir: str) -> None:
  """Imports the run's `env.import_tasks` and --import_tasks, so their tasks are registered."""
  specs = [_IMPORT_TASKS.value]
  config_file = os.path.join(workdir, "config.json")
  if os.path.isfile(config_file):
    with open(config_file, encoding="utf-8") as f:
      specs.append(json.load(f).get("env", {}).get("import_tasks", ""))
  spec = ",".join(s for s in specs if s)
  if not spec:
    return
  from dvla_jax.envs import custom  # pylint: disable=g-import-not-at-top

  try:
    custom.import_tasks(spec)
  except (custom.ImportTasksError, custom.TaskDefinitionError) as e:
    _fail(str(e))


def _fail(message: str) -> NoReturn:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(_USAGE_ERROR)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flags parser for `app.run`: a flag mistake is one line and exit status 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    text = str(e).splitlines()[0].replace("ERROR:: ", "")
    _fail(text)


def _check_numbers() -> None:
  checks = (
      ("episodes", _EPISODES.value >= 1, ">= 1"),
      ("videos", 0 <= _VIDEOS.value <= _EPISODES.value, "0..--episodes"),
      ("video_size", _VIDEO_SIZE.value == 0 or 16 <= _VIDEO_SIZE.value <= 256, "0 or 16..256"),
      ("num_envs", _NUM_ENVS.value >= 0, ">= 0"),
      ("episode_length", _EPISODE_LENGTH.value >= 0, ">= 0"),
      ("step", _STEP.value is None or _STEP.value >= 0, ">= 0"),
  )
  for name, ok, allowed in checks:
    if not ok:
      _fail(f"--{name}={flags.FLAGS[name].value}; allowed: {allowed}")
  if _SUITE.value and _TASKS.value:
    _fail("--suite and --tasks both given; allowed: one of them")


def _task_names() -> list[str]:
  """The tasks asked for ([] = the run's own tasks); unknown names fail with one line."""
  from dvla_jax import envs  # pylint: disable=g-import-not-at-top

  if _SUITE.value:
    if _SUITE.value not in envs.list_suites():
      _fail(f"--suite={_SUITE.value}: unknown suite; allowed: {', '.join(envs.list_suites())}")
    return envs.suite_tasks(_SUITE.value)
  for name in _TASKS.value:
    try:
      envs.check_task(name)
    except envs.UnknownTaskError as e:
      _fail(f"--tasks: {e}")
  return list(dict.fromkeys(_TASKS.value))


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments {' '.join(argv[1:])!r}; allowed: --flags only")
  if not _WORKDIR.value:
    _fail("--workdir is required; allowed: a training run's directory")
  _check_numbers()
  workdir = _WORKDIR.value
  if not paths.has_checkpoint(workdir):
    _fail(f"--workdir={workdir}: no checkpoint in {paths.checkpoint_dir(workdir)}")
  if not flags.FLAGS["verbosity"].present:  # absl INFO (JAX's backend probes, ...) is opt-in.
    logging.set_verbosity(logging.WARNING)
  _import_tasks(workdir)
  tasks = _task_names()
  # Imported after the cheap checks: JAX, MuJoCo and the model take seconds to load.
  from dvla_jax.envs import mjx_env  # pylint: disable=g-import-not-at-top
  mjx_env.init_warp_quietly()
  from dvla_jax.evaluate import report  # pylint: disable=g-import-not-at-top
  from dvla_jax.evaluate import workdir as workdir_lib  # pylint: disable=g-import-not-at-top

  greedy = _ACTIONS.value == "greedy"
  try:
    result = workdir_lib.evaluate_workdir(
        workdir, tasks, episodes=_EPISODES.value, num_videos=_VIDEOS.value,
        video_size=_VIDEO_SIZE.value, video_dir=_VIDEO_DIR.value or None,
        video_format=_VIDEO_FORMAT.value, step=_STEP.value, greedy=greedy,
        num_envs=_NUM_ENVS.value, episode_length=_EPISODE_LENGTH.value, seed=_SEED.value)
  except workdir_lib.NothingToEvaluateError as e:
    print(str(e), file=sys.stderr)
    sys.exit(_USAGE_ERROR)
  except FileNotFoundError as e:  # A --step that is not kept.
    _fail(str(e))
  out = _OUT.value or paths.results_file(workdir)
  report.write_json(result, out)
  report.print_table(result)
  print(f"results: {out}")


def run() -> None:
  """Entry point: `python -m dvla_jax.evaluate`, or the `dvla-eval` console script."""
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
