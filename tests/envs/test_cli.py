"""`python -m dvla_jax.envs`: the task list, bad input in one line, and an expert video."""

import os
import subprocess
import sys

import imageio.v2 as imageio
import numpy as np
import pytest

from dvla_jax import envs
from dvla_jax.envs import __main__ as cli

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*args):
  env = dict(os.environ, PYTHONPATH=_ROOT, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "dvla_jax.envs", *args], capture_output=True,
                        text=True, env=env, cwd=_ROOT, timeout=300, check=False)


def test_list_prints_every_task_with_its_suite():
  out = _run("--list")
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  assert len(lines) == len(envs.list_tasks())
  for line in lines:
    name, suite, description = line.split(maxsplit=2)
    assert suite == (envs.task_suite(name) or "-") and description == envs.describe(name)


def test_list_with_import_tasks_adds_the_user_task(tmp_path):
  out = _run("--import_tasks=examples/custom_task.py", "--list")
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  assert len(lines) == len(envs.list_tasks()) + 1
  (line,) = [line for line in lines if line.startswith("hover_over_ball ")]
  assert line.split(maxsplit=2)[1] == "examples"
  video = tmp_path / "hover.gif"
  out = _run("--import_tasks=examples/custom_task.py", "--task", "hover_over_ball", "--video",
             str(video), "--size", "32")
  assert out.returncode == 0, out.stderr
  assert "the expert succeeded" in out.stdout and video.stat().st_size > 0
  out = _run("--import_tasks=no_such_tasks.py", "--list")
  assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
  assert "no such file 'no_such_tasks.py'" in out.stderr


def test_unknown_task_is_one_line_with_the_closest_names():
  out = _run("--task", "no_such_task_xyz", "--video", "x.gif")
  assert out.returncode == 2
  assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
  assert "closest:" in out.stderr and not os.path.exists(os.path.join(_ROOT, "x.gif"))


@pytest.mark.parametrize("args, words", [
    (["--task", "goal_stack_cube", "--video", "v.gif"], "closest: goal_stack_cubes"),
    (["--task", "goal_touch_ball", "--video", "v.gif", "--size", "0"], "image_size=0"),
    (["--task", "goal_touch_ball", "--video", "v.gif", "--camera", "side"], "unknown camera"),
    (["--task", "goal_touch_ball", "--video", "v.avi"], ".gif or .mp4"),
    (["--task", "goal_touch_ball"], "--video FILE"),
])
def test_bad_input_exits_2_in_one_line(args, words, tmp_path, capsys):
  args = [str(tmp_path / a) if a.startswith("v.") else a for a in args]
  assert cli.main(args) == 2
  err = capsys.readouterr().err
  assert words in err and "Traceback" not in err
  assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1


def test_video_records_the_expert(tmp_path, capsys):
  path = tmp_path / "touch.gif"
  assert cli.main(["--task", "goal_touch_ball", "--video", str(path), "--size", "32",
                   "--camera", "front,wrist"]) == 0
  assert "the expert succeeded" in capsys.readouterr().out
  frames = np.asarray(imageio.mimread(path))
  assert frames.shape[1:] == (32, 64, 3)  # Two cameras side by side.
  assert len(frames) > 4
  # The gripper moves: the first and last frames differ.
  assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).sum(-1).mean() > 5


def test_experts_rates_a_task_outside_the_suite(tmp_path, capsys):
  out = tmp_path / "experts.json"
  assert cli.main(["--experts", "--task", "touch_cube", "--episodes", "8",
                   "--out", str(out)]) == 0
  assert "touch_cube" in capsys.readouterr().out
  import json  # pylint: disable=g-import-not-at-top
  row = json.loads(out.read_text())["touch_cube"]
  assert row["episodes"] >= 8 and row["success_rate"] > 0.9
