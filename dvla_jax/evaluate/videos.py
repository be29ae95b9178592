"""Videos of evaluated episodes: replayed at a larger camera size, or upscaled observations.

A replay resets a second env, built at the video's camera size, from each episode's reset key
and task and steps it with the actions the policy took. The layout comes from the key alone
and the camera size changes only the pictures, so the replay is the same episode seen in
more pixels; `replay_success` lets the caller check that it ended the same way.
"""

import importlib.util
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from dvla_jax import envs
from dvla_jax.evaluate import runner

_MIN_VIDEO_SIZE = 128


def video_extension(fmt: str = "auto") -> str:
  """".mp4" when asked for (or "auto" and imageio-ffmpeg is installed), else ".gif"."""
  if fmt == "auto":
    fmt = "mp4" if importlib.util.find_spec("imageio_ffmpeg") is not None else "gif"
  if fmt not in ("gif", "mp4"):
    raise ValueError(f"video format {fmt!r}; allowed: auto, gif, mp4")
  return "." + fmt


def upscale(frame: np.ndarray, size: int = _MIN_VIDEO_SIZE) -> np.ndarray:
  """Nearest-neighbour upscaling of [S, W, 3] by the smallest integer factor reaching `size`."""
  factor = max(1, -(-size // frame.shape[0]))
  return np.repeat(np.repeat(frame, factor, axis=0), factor, axis=1)


def replay(names: Sequence[str], env_config: envs.EnvConfig, episodes: runner.Episodes,
           chosen: Sequence[int]) -> tuple[list[np.ndarray], np.ndarray]:
  """Replays episodes `chosen` of `episodes` in a new env built from `env_config`.

  Args:
    names: the tasks of the group the episodes ran in (same order).
    env_config: the video env's settings (its `image_size` is the video's); `num_worlds` is
      set to the number of episodes.
    episodes: the evaluated episodes, with actions recorded for `chosen`.
    chosen: episode numbers to replay.

  Returns:
    (per episode uint8 [length + 1, cameras, S, S, 3] frames, float [n] success of the replay).
  """
  n = len(chosen)
  group = runner.TaskGroup(names, env_config.replace(num_worlds=n))
  lengths = [len(episodes.actions[e]) for e in chosen]
  horizon = max(lengths)
  width = episodes.actions[chosen[0]].shape[-1]
  actions = np.zeros((horizon, n, width), np.float32)
  for j, e in enumerate(chosen):
    actions[:lengths[j], j] = episodes.actions[e]
  state = group.reset(jnp.asarray(episodes.keys[np.array(chosen)]),
                      jnp.asarray(episodes.task[np.array(chosen)], jnp.int32))
  frames = [np.asarray(state.obs["image"])]
  success = np.zeros((n,), np.float32)
  for t in range(horizon):
    state = group.step(state, jnp.asarray(actions[t]))
    frames.append(np.asarray(state.obs["image"]))
    live = np.array([t < length for length in lengths])
    success = np.maximum(success, live * np.asarray(state.metrics["success"]))
  stacked = np.stack(frames, axis=1)  # [n, horizon + 1, cameras, S, S, 3]
  return [stacked[j, :lengths[j] + 1] for j in range(n)], success
