"""Evaluates the checkpoint of a run directory on a list of tasks: scores, intervals, videos."""

import os
import time
from typing import Any, Optional, Sequence

from absl import logging
import jax
import numpy as np

from dvla_jax import envs
from dvla_jax.envs import video as env_video
from dvla_jax.evaluate import paths
from dvla_jax.evaluate import report
from dvla_jax.evaluate import runner
from dvla_jax.evaluate import videos
from dvla_jax.programs import builders


class NothingToEvaluateError(ValueError):
  """None of the requested tasks fits the checkpoint's observation and action shapes."""


def evaluate_workdir(workdir: str, tasks: Optional[Sequence[str]] = None, episodes: int = 16,
                     num_videos: int = 2, video_size: int = 128,
                     video_dir: Optional[str] = None, video_format: str = "auto",
                     step: Optional[int] = None, greedy: bool = False,
                     num_envs: int = 0, episode_length: int = 0, seed: int = 0
                     ) -> dict[str, Any]:
  """Restores the policy of `workdir` and scores it on `tasks`.

  Args:
    workdir: a training run's directory (with `checkpoints/`).
    tasks: task names (default: the tasks the run trained on, its `env.task`).
    episodes: episodes per task.
    num_videos: episodes per task written as videos.
    video_size: camera size of the videos; the episodes are replayed in an env rendering at
      this size. 0 (or the observation size) upscales the observation frames instead.
    video_dir: where the videos go (default `workdir/eval/videos`).
    video_format: "auto" (mp4 if imageio-ffmpeg is installed, else gif), "gif" or "mp4".
    step: the checkpoint to evaluate (None: the latest).
    greedy: argmax actions instead of sampling at the run's `model.temperature`.
    num_envs: worlds per env batch (0: the run's envs per group).
    episode_length: the episode limit (0: the run's `env.episode_length`).
    seed: seed of the layouts and sampled actions.

  Returns:
    {"workdir", "checkpoint_step", "trained_task", "episodes_per_task", "greedy", "seed",
     "tasks": {name: summary + "videos"}, "incompatible": {name: reason}, "overall",
     "seconds"}; see `report.task_summary` for a summary's fields.

  Raises:
    FileNotFoundError: no checkpoint in `workdir`.
    NothingToEvaluateError: no requested task fits the checkpoint (message: one line per task).
  """
  t0 = time.perf_counter()
  policy = runner.load_policy(workdir, step, greedy)
  config = policy.config
  tasks = list(tasks or envs.resolve_tasks(config.env.task))
  env_config = builders.env_config(
      config, num_envs or config.env.num_envs // config.swimlanes.env_groups)
  if episode_length:
    env_config = env_config.replace(episode_length=episode_length)
  video_dir = video_dir or paths.video_dir(workdir)
  extension = videos.video_extension(video_format)
  rng = jax.random.key(seed)
  scores, incompatible = {}, {}
  for g, names in enumerate(runner.group_tasks(tasks)):
    group = runner.TaskGroup(names, env_config)
    bad = runner.incompatibility(policy, group)
    incompatible.update(bad)
    names = [n for n in names if n not in bad]
    if not names:
      continue
    if bad:  # Rebuild without the tasks the policy cannot act in.
      group = runner.TaskGroup(names, env_config)
    upscaled = video_size in (0, env_config.image_size)
    result = runner.run_episodes(policy, group, episodes, jax.random.fold_in(rng, g),
                                 record=num_videos, keep_frames=upscaled)
    written = write_videos(result, env_config, num_videos, video_size, upscaled, video_dir,
                            extension)
    for i, name in enumerate(names):
      mine = result.of_task(i)
      scores[name] = dict(report.task_summary(result.success[mine],
                                              result.episode_return[mine], result.length[mine]),
                          videos=written.get(name, []))
  if not scores:
    raise NothingToEvaluateError("\n".join(
        f"{name}: not evaluated, {why}" for name, why in incompatible.items()))
  return {
      "workdir": workdir,
      "checkpoint_step": policy.step,
      "trained_task": config.env.task,
      "episodes_per_task": episodes,
      "greedy": bool(greedy),
      "seed": seed,
      "tasks": {name: scores[name] for name in tasks if name in scores},
      "incompatible": incompatible,
      "overall": report.overall(scores),
      "seconds": time.perf_counter() - t0,
  }


def write_videos(result: runner.Episodes, env_config, num_videos: int, video_size: int,
                  upscaled: bool, video_dir: str, extension: str) -> dict[str, list[dict]]:
  """Writes the recorded episodes of each task as videos.

  Args:
    result: episodes of one task group, with actions (and frames if `upscaled`) recorded.
    env_config: the evaluation env's settings (the replay env is this at `video_size`).
    num_videos: videos per task (0: none).
    video_size: camera size of a replay.
    upscaled: upscale the recorded observation frames instead of replaying.
    video_dir: output folder; files are `<task>_<k><extension>`.
    extension: ".gif" or ".mp4".

  Returns:
    task -> [{"path", "success", "steps", "replay_matches"}].
  """
  chosen = sorted(result.actions)
  if not chosen or num_videos <= 0:
    return {}
  if upscaled:
    frames = [result.frames[e] for e in chosen]
    replayed = result.success[np.array(chosen)]
  else:
    frames, replayed = videos.replay(result.names, env_config.replace(image_size=video_size),
                                     result, chosen)
  written: dict[str, list[dict]] = {}
  for j, e in enumerate(chosen):
    name = result.names[result.task[e]]
    k = len(written.setdefault(name, []))
    path = os.path.join(video_dir, f"{name}_{k}{extension}")
    images = [env_video.tile(f) for f in frames[j]]
    if upscaled:
      images = [videos.upscale(f) for f in images]
    env_video.write_video(path, images)
    same = bool(replayed[j] == result.success[e])
    if not same:
      logging.warning("%s: the replay of episode %d for the video ended differently "
                      "(success %s, evaluated %s)", name, e, replayed[j], result.success[e])
    written[name].append({"path": path, "success": bool(result.success[e]),
                          "steps": int(result.length[e]), "replay_matches": same})
  return written
