"""Videos: the one writer (`write_video`, GIF or MP4) and a scripted-expert episode of a task.

One frame per policy step, the chosen cameras side by side (`tile`); a few extra frames hold
the final state so a looping video shows the outcome. `dvla_jax.evaluate` writes the policy's
episodes with the same writer.
"""

import importlib.util
import os
from typing import Any, Sequence

import imageio.v2 as imageio
import jax
import numpy as np

from dvla_jax.envs import episodes
from dvla_jax.envs import registry

# Frames that repeat the last one, so a looping video shows the outcome.
HOLD_FRAMES = 4


def tile(images: np.ndarray) -> np.ndarray:
  """One frame from uint8 [cameras, S, S, 3]: the cameras side by side."""
  return np.concatenate(list(images), axis=1)


def write_video(path: str, frames: Sequence[np.ndarray], fps: float = 8.0,
                hold_frames: int = HOLD_FRAMES) -> str:
  """Writes uint8 [H, W, 3] frames to `path` (.gif or .mp4), holding the last frame a while.

  Args:
    path: output file; its extension picks the format (.mp4 needs imageio-ffmpeg).
    frames: the frames, all the same size.
    fps: playback rate.
    hold_frames: extra copies of the last frame.

  Returns:
    `path`.
  """
  frames = list(frames) + [frames[-1]] * hold_frames
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  if path.lower().endswith(".gif"):
    imageio.mimsave(path, frames, duration=1000.0 / fps, loop=0)
  else:
    # Video codecs want sides that are multiples of 16.
    imageio.mimsave(path, frames, fps=fps, macro_block_size=16)
  return path


def check_video_path(path: str) -> None:
  """Raises ValueError (one line) if `path` is not a writable .gif/.mp4 destination."""
  ext = os.path.splitext(path)[1].lower()
  if ext not in (".gif", ".mp4"):
    raise ValueError(f"video path {path!r}: the extension must be .gif or .mp4")
  if ext == ".mp4" and importlib.util.find_spec("imageio_ffmpeg") is None:
    raise ValueError("writing .mp4 needs the imageio-ffmpeg package; use a .gif path instead")
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    raise ValueError(f"video path {path!r}: folder {folder} does not exist")


def expert_frames(task: str, image_size: int = 128, cameras: Sequence[str] = ("front",),
                  seed: int = 0, max_steps: int | None = None) -> tuple[list[np.ndarray], dict]:
  """Runs the expert on one world of `task` and returns its frames and a summary.

  Args:
    task: a registered task name.
    image_size: camera resolution in pixels.
    cameras: cameras drawn side by side in each frame.
    seed: PRNG seed of the episode's layout.
    max_steps: policy steps at most (default: the task's episode limit).

  Returns:
    (frames: uint8 [S, S * len(cameras), 3] each, one per policy step and the first state,
     {"task", "instruction", "success", "steps"}).
  """
  config = registry.default_config(task, num_worlds=1, image_size=image_size,
                                   cameras=tuple(cameras))
  env = registry.make(task, config)
  reset = jax.jit(jax.vmap(env.reset))
  step = jax.jit(lambda s: jax.vmap(env.step)(s, jax.vmap(env.expert_action)(s)))
  state = reset(jax.random.split(jax.random.PRNGKey(seed), 1))
  frames = [_frame(state)]
  _, totals = episodes.play(state, lambda s, t: step(s), max_steps or config.episode_length,
                            on_step=lambda t, s, nxt: frames.append(_frame(nxt)),
                            check_every=1)
  steps = int(totals.length[0])
  instruction = env.instruction_table()[int(state.obs["instruction"][0])]
  summary = {"task": task, "instruction": instruction,
             "success": bool(totals.success[0] > 0), "steps": steps}
  return frames[:steps + 1], summary


def record_expert_video(task: str, path: str, image_size: int = 128,
                        cameras: Sequence[str] = ("front",), seed: int = 0,
                        max_steps: int | None = None, fps: float = 12.5) -> dict[str, Any]:
  """Writes the expert episode of `task` to `path` (.gif, or .mp4 with imageio-ffmpeg).

  Args:
    task: a registered task name.
    path: output file.
    image_size: camera resolution in pixels.
    cameras: cameras drawn side by side.
    seed: PRNG seed of the episode's layout.
    max_steps: policy steps at most (default: the task's episode limit).
    fps: playback rate; 12.5 is real time at the default 80 ms policy step.

  Returns:
    {"task", "instruction", "success", "steps", "frames", "path"}.
  """
  check_video_path(path)
  frames, summary = expert_frames(task, image_size, cameras, seed, max_steps)
  write_video(path, frames, fps)
  return dict(summary, frames=len(frames) + HOLD_FRAMES, path=path)


def _frame(state) -> np.ndarray:
  return tile(np.asarray(state.obs["image"][0]))  # [cameras, S, S, 3]
