"""Where an evaluation finds a run's checkpoints and puts its results (no heavy imports)."""

import os

CHECKPOINTS = "checkpoints"


def checkpoint_dir(workdir: str) -> str:
  """The run's checkpoint folder, `workdir/checkpoints`."""
  return os.path.join(workdir, CHECKPOINTS)


def has_checkpoint(workdir: str) -> bool:
  """Whether the run holds a finished checkpoint, checked without orbax.

  Orbax names a finished step's folder by its number (unfinished ones carry a suffix), and
  opening a manager on a wrong path would create the folder.
  """
  folder = checkpoint_dir(workdir)
  return os.path.isdir(folder) and any(name.isdigit() for name in os.listdir(folder))


def results_file(workdir: str) -> str:
  """Default JSON results file of an evaluation, `workdir/eval/results.json`."""
  return os.path.join(workdir, "eval", "results.json")


def video_dir(workdir: str) -> str:
  """Default video folder of an evaluation, `workdir/eval/videos`."""
  return os.path.join(workdir, "eval", "videos")
