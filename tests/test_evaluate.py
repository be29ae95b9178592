"""Tests of `python -m dvla_jax.evaluate`: intervals, episode scoring, videos, the CLI."""

import importlib.util
import io
import json
import os
import subprocess
import sys

import imageio.v2 as imageio
import jax
import numpy as np
import pytest
from rich import console as rich_console

from dvla_jax.envs import video as env_video
from dvla_jax.evaluate import report
from dvla_jax.evaluate import runner
from dvla_jax.evaluate import videos
from dvla_jax.evaluate import workdir as workdir_lib

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The task the fixture checkpoint "trained" on: its instructions are the longest of the goal
# suite but for goal_place_cube, so the model fits every other goal task.
_TASK = "goal_push_cube"


def test_wilson_interval_matches_known_values():
  # Reference values of the Wilson score interval at 95%.
  assert report.wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-4)
  assert report.wilson_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-4)
  assert report.wilson_interval(10, 10) == pytest.approx((0.72247, 1.0), abs=1e-4)
  assert report.wilson_interval(81, 263) == pytest.approx((0.25529, 0.36621), abs=1e-4)
  low, high = report.wilson_interval(3, 4)
  assert low < 0.75 < high
  with pytest.raises(ValueError):
    report.wilson_interval(3, 2)


def test_summary_and_pooled_rates():
  row = report.task_summary([1, 0, 1, 1], [2.0, 0.0, 1.0, 1.0], [3, 8, 4, 5])
  assert (row["episodes"], row["successes"], row["success_rate"]) == (4, 3, 0.75)
  assert row["episode_return"] == 1.0 and row["episode_length"] == 5.0
  assert row["ci95"] == list(report.wilson_interval(3, 4))
  pooled = report.overall({"a": row, "b": report.task_summary([0, 0], [0, 0], [8, 8])})
  assert (pooled["episodes"], pooled["successes"]) == (6, 3)
  assert pooled["mean_task_success_rate"] == pytest.approx(0.375)
  assert report.overall({}) is None


def test_group_tasks_puts_suite_tasks_together():
  groups = runner.group_tasks(["touch_cube", "goal_touch_ball", "goal_push_cube"])
  assert groups == [["goal_touch_ball", "goal_push_cube"], ["touch_cube"]]


def _fake_episodes(length=3, size=16):
  frames = np.zeros((length + 1, 1, size, size, 3), np.uint8)
  for t in range(length + 1):
    frames[t, 0, :, : (t + 1) * 4] = 255  # A bar that grows: every frame differs.
  return runner.Episodes(
      names=["a", "b"], task=np.array([0, 1, 0, 1]), success=np.array([1.0, 0.0, 0.0, 0.0]),
      episode_return=np.zeros(4), length=np.array([length, 8, 8, 8], np.float32),
      keys=np.zeros((4, 2), np.uint32),
      actions={0: np.zeros((length, 4), np.float32), 1: np.zeros((8, 4), np.float32)},
      frames={0: frames, 1: np.zeros((9, 1, size, size, 3), np.uint8)})


def test_upscaled_videos_are_written_per_task(tmp_path):
  episodes = _fake_episodes()
  written = workdir_lib.write_videos(episodes, env_config=None, num_videos=1, video_size=0,
                                     upscaled=True, video_dir=str(tmp_path), extension=".gif")
  assert sorted(written) == ["a", "b"]
  (clip,) = written["a"]
  assert clip == {"path": str(tmp_path / "a_0.gif"), "success": True, "steps": 3,
                  "replay_matches": True}
  frames = imageio.mimread(clip["path"])
  # Four distinct frames (reset + 3 steps), upscaled from 16 to 128 pixels.
  assert len(frames) >= 4 and frames[0].shape[:2] == (128, 128)
  assert frames[0][:, :32].mean() > 200 and frames[0][:, 40:].mean() < 50
  assert frames[3][:, :128].mean() > 200


def test_video_helpers():
  frame = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
  big = videos.upscale(frame, 128)
  assert big.shape == (128, 192, 3)  # Factor 64: the smallest that reaches 128 rows.
  np.testing.assert_array_equal(big[::64, ::64], frame)
  two_cameras = np.stack([np.zeros((4, 4, 3), np.uint8), np.ones((4, 4, 3), np.uint8)])
  tiled = env_video.tile(two_cameras)
  assert tiled.shape == (4, 8, 3) and tiled[:, 4:].min() == 1 and tiled[:, :4].max() == 0
  assert videos.video_extension("gif") == ".gif"
  with pytest.raises(ValueError, match="allowed: auto, gif, mp4"):
    videos.video_extension("avi")


def _save_checkpoint(workdir: str, task: str = _TASK) -> dict:
  """A run directory whose checkpoint holds a freshly initialised tiny policy (no training)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top

  from dvla_jax import envs  # pylint: disable=g-import-not-at-top
  from dvla_jax import models  # pylint: disable=g-import-not-at-top
  from dvla_jax.programs import builders  # pylint: disable=g-import-not-at-top
  from dvla_jax.training import checkpoints  # pylint: disable=g-import-not-at-top

  spec = importlib.util.spec_from_file_location("demo_config",
                                                os.path.join(_REPO, "configs", "demo.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("tiny")
  config.env.task = task
  config.env.num_envs = 4
  probe = envs.make(task, builders.env_config(config, 1).replace(render=False))
  mcfg = builders.model_config(config, probe)
  params = nnx.state(models.VLA(mcfg, rngs=nnx.Rngs(3)))
  with checkpoints.Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
    ckpt.save(5, params, params, {"config": ml_collections.ConfigDict(config)})
  return params


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  return workdir, _save_checkpoint(workdir)


def test_load_policy_restores_the_saved_params(run_dir):
  workdir, saved = run_dir
  policy = runner.load_policy(workdir)
  assert policy.step == 5 and policy.config.env.task == _TASK
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(policy.params), saved)
  with pytest.raises(FileNotFoundError, match="step 7"):
    runner.load_policy(workdir, step=7)


@pytest.mark.slow
def test_evaluates_suite_tasks_with_replayed_videos(run_dir, tmp_path):
  workdir, _ = run_dir
  tasks = ["goal_touch_ball", _TASK, "goal_place_cube", "touch_cube"]
  result = workdir_lib.evaluate_workdir(workdir, tasks, episodes=2, num_videos=1,
                                        video_size=64, video_dir=str(tmp_path), num_envs=4,
                                        episode_length=4)
  # goal_place_cube's instructions are longer than the model's; touch_cube is another robot.
  assert result["incompatible"] == {
      "goal_place_cube": "instructions need 54 tokens > the checkpoint's 42",
      "touch_cube": "proprio size 6 != the checkpoint's 8"}
  assert list(result["tasks"]) == ["goal_touch_ball", _TASK]
  for row in result["tasks"].values():
    assert row["episodes"] == 2 and 0 <= row["successes"] <= 2
    assert row["ci95"][0] <= row["success_rate"] <= row["ci95"][1]
    assert 1 <= row["episode_length"] <= 4
    (clip,) = row["videos"]
    assert clip["replay_matches"], clip
    frames = imageio.mimread(clip["path"])
    assert frames[0].shape[:2] == (64, 64)  # Rendered at the video size, not upscaled.
  assert result["overall"]["episodes"] == 4
  # The table names every task, the skipped ones in a line of their own.
  out = io.StringIO()
  report.print_table(result, rich_console.Console(file=out, width=120))
  text = out.getvalue()
  assert "goal_touch_ball" in text and "touch_cube: not evaluated, proprio size" in text
  report.write_json(result, str(tmp_path / "r.json"))
  with open(tmp_path / "r.json") as f:
    assert json.load(f)["tasks"][_TASK]["episodes"] == 2


@pytest.mark.slow
def test_a_suite_run_is_evaluated_on_each_of_its_tasks(tmp_path):
  workdir = str(tmp_path / "suite_run")
  _save_checkpoint(workdir, "suite:goal")
  result = workdir_lib.evaluate_workdir(workdir, episodes=1, num_videos=0, num_envs=5,
                                        episode_length=2)
  assert result["trained_task"] == "suite:goal" and not result["incompatible"]
  assert list(result["tasks"]) == [
      "goal_touch_ball", "goal_push_cube", "goal_lift_cylinder", "goal_place_cube",
      "goal_stack_cubes"]
  assert all(row["episodes"] == 1 for row in result["tasks"].values())


def test_nothing_compatible_is_an_error(run_dir):
  workdir, _ = run_dir
  with pytest.raises(workdir_lib.NothingToEvaluateError, match="touch_cube: not evaluated"):
    workdir_lib.evaluate_workdir(workdir, ["touch_cube"], episodes=1, num_videos=0)


def _cli(*args, timeout=120):
  env = dict(os.environ, PYTHONPATH=_REPO, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "dvla_jax.evaluate", *args], cwd=_REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_cli_help_lists_workdir():
  proc = _cli("--helpfull")  # absl exits with status 1 after printing the help.
  assert "--workdir" in proc.stdout and "--suite" in proc.stdout, proc.stderr


@pytest.mark.parametrize("args, expected", [
    (["--workdir={empty}"], "no checkpoint in"),
    (["--workdir={empty}", "--episodes=0"], "--episodes=0; allowed: >= 1"),
    (["--workdir={run}", "--suite=bogus"], "unknown suite; allowed: spatial, object"),
    (["--workdir={run}", "--tasks=goal_push_cub"], "closest: goal_push_cube"),
    ([], "--workdir is required"),
])
def test_cli_bad_input_is_one_line(run_dir, tmp_path, args, expected):
  proc = _cli(*(a.format(empty=tmp_path, run=run_dir[0]) for a in args))
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and expected in lines[0], proc.stderr
  assert not os.path.exists(tmp_path / "checkpoints")  # Nothing created in a wrong workdir.
