"""MuJoCo Playground environments as dvla_jax tasks.

`PlaygroundAdapter` wraps an environment written for MuJoCo Playground (`mujoco_playground.
MjxEnv`, for example its dm_control_suite tasks) so that it offers what training expects of a
`TabletopEnv`: single-world `reset`/`step` in brax's `State`, an observation dict
(`image`, `text`, `proprio`), flat action chunks [H * D] in [-1, 1], `config: EnvConfig`,
`mj_model`/`mjx_model`, and `registry.wrap_for_training` for the batch.

The adapter relies only on Playground's env contract, not on the package: `reset(rng)` and
`step(state, action)` return a state with fields `data`, `obs`, `reward`, `done`, `metrics`,
`info`; the env has `action_size`, `mj_model` and `mjx_model`. So any env written in that
style plugs in, and the `playground` package is needed only by `make`.

Observation mapping:
  - image: the env's cameras drawn by MJX's batch renderer (Warp models with a camera), else
    zeros of the configured size;
  - text: the task name as words ("CartpoleBalance" -> "cartpole balance"), tokenised;
  - proprio: the env's state observation, flattened (for dict observations, the "state" entry,
    or every non-pixel entry, flattened and concatenated in key order).

An action chunk runs the Playground env H times; the chunk's reward is the sum of the rewards
until the env reports done, and done is set if any of the H steps was done. Playground's own
obs, info and metrics ride in `info["task"]`, which the auto-reset wrapper restores with the
physics state. A Playground env has no success predicate: `success_fn` may supply one, else
`metrics["success"]` is 0.

Example:
  env = playground.make("CartpoleBalance", envs.EnvConfig(num_worlds=16, action_horizon=2))
  venv = envs.wrap_for_training(env)
"""

import dataclasses
import difflib
import re
from typing import Any, Callable, Mapping

from brax.envs import base as brax_base
import jax
import jax.numpy as jnp
from mujoco import mjx

from dvla_jax.config import names
from dvla_jax.envs import mjx_env

State = brax_base.State

_DEFAULT_PLAYGROUND_STEPS = 1000  # dm_control's episode length, in env steps.


def task_words(name: str) -> str:
  """Turns a Playground task name into words: "CartpoleBalance" -> "cartpole balance"."""
  words = re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", name)
  return " ".join(w.lower() for w in words) or name


class PlaygroundAdapter(brax_base.Env):
  """A Playground-style env behind the `TabletopEnv` interface (single world).

  Attributes:
    config: the resolved settings (cameras are the model's camera names that are drawn).
    env: the wrapped Playground env.
    task_name: the name the instruction is made from.
    action_dim: D, the Playground env's action size.
    proprio_dim: size of the flattened state observation.
  """

  def __init__(self, env: Any, task_name: str, config: mjx_env.EnvConfig,
               cameras: tuple[str, ...] | None = None, render: bool = True,
               success_fn: Callable[[Any], jax.Array] | None = None):
    """Wraps `env`.

    Args:
      env: a Playground-style env (see the module docstring).
      task_name: instruction text source, e.g. "CartpoleBalance".
      config: num_worlds, image_size, episode_length (policy steps; None takes the
        Playground env's own, divided by H) and action_horizon are used;
        `impl` is the Playground env's own.
      cameras: model camera names to draw; None draws the model's first camera.
      render: False gives zero images (faster; also for non-Warp models).
      success_fn: optional `(playground state) -> bool` success predicate.
    """
    if config.episode_length is None:
      # Playground counts its episode in env steps; ours counts action chunks.
      pg_config = getattr(env, "_config", None)
      steps = getattr(pg_config, "episode_length", _DEFAULT_PLAYGROUND_STEPS)
      config = dataclasses.replace(
          config, episode_length=max(1, int(steps) // max(1, config.action_horizon)))
    for field, ok, allowed in (
        ("num_worlds", config.num_worlds >= 1, ">= 1"),
        ("image_size", 16 <= config.image_size <= 256, "16..256"),
        ("episode_length", config.episode_length >= 1, ">= 1"),
        ("action_horizon", config.action_horizon >= 1, ">= 1")):
      if not ok:
        raise ValueError(f"EnvConfig.{field}={getattr(config, field)!r}; allowed: {allowed}")
    self.env = env
    self.task_name = task_name
    self.mj_model = env.mj_model
    self.mjx_model = env.mjx_model
    self.action_dim = int(env.action_size)
    self._success_fn = success_fn
    model = self.mj_model
    if cameras is None:
      cameras = (model.camera(0).name or "0",) if model.ncam else ()
    self._camera_ids = [model.camera(c).id if not c.isdigit() else int(c) for c in cameras]
    impl = getattr(getattr(self.mjx_model, "impl", None), "value", "warp")
    # substeps and timestep describe the Playground env (for throughput accounting only).
    self.config = dataclasses.replace(
        config, cameras=tuple(cameras) or ("none",), impl=impl,
        substeps=int(getattr(env, "n_substeps", 1)), timestep=float(model.opt.timestep))
    self._render_ctx = None
    if render and self._camera_ids and impl == "warp":
      # The context object owns the Warp buffers: keep it alive as long as the adapter.
      self._render_context = mjx.create_render_context(
          mjm=model, nworld=config.num_worlds, cam_res=(config.image_size, config.image_size),
          use_textures=False, use_shadows=False, render_rgb=True, render_depth=False,
          cam_active=[i in self._camera_ids for i in range(model.ncam)],
          enabled_geom_groups=[0, 1, 2])
      self._render_ctx = self._render_context.pytree()
    self._words = task_words(task_name)
    shape = jax.eval_shape(env.reset, jax.random.PRNGKey(0))
    self._state_cls = type(shape)
    self.proprio_dim = int(jax.eval_shape(_flat_state_obs, shape.obs).shape[0])

  # -- brax Env interface -------------------------------------------------------------------

  def reset(self, rng: jax.Array) -> State:
    pg = self.env.reset(rng)
    # An episode never starts solved: the sparse reward is for reaching success.
    info = {"task": {"instruction": jnp.zeros((), jnp.int32), "obs": pg.obs, "info": pg.info,
                     "metrics": pg.metrics},
            "success": jnp.zeros((), jnp.float32)}
    metrics = {"success": jnp.zeros(()), "distance": jnp.zeros(()), **pg.metrics}
    return State(pipeline_state=pg.data, obs=self._observe(pg), reward=jnp.zeros(()),
                 done=jnp.zeros(()), metrics=metrics, info=info)

  def step(self, state: State, action: jax.Array) -> State:
    """Executes one action chunk `action` [H * D] in [-1, 1] as H Playground steps."""
    action = jnp.clip(jnp.reshape(action, (self.config.action_horizon, self.action_dim)), -1, 1)
    task = state.info["task"]
    pg = self._state_cls(data=state.pipeline_state, obs=task["obs"], reward=state.reward,
                         done=jnp.zeros_like(state.done), metrics=task["metrics"],
                         info=task["info"])

    def one_step(carry, a):
      pg, total, done, reached = carry
      pg = self.env.step(pg, a)
      total = total + jnp.where(done, 0.0, pg.reward)
      reached = reached | (~done & self._success(pg))
      return (pg, total, done | (pg.done > 0), reached), None

    start = (pg, jnp.zeros(()), jnp.zeros((), bool), jnp.zeros((), bool))
    (pg, reward, done, reached), _ = jax.lax.scan(one_step, start, action)
    sparse = reached.astype(jnp.float32)
    info = dict(state.info, task=dict(task, obs=pg.obs, info=pg.info, metrics=pg.metrics),
                success=sparse)
    metrics = {"success": sparse, "distance": jnp.zeros(()), **pg.metrics}
    done = jnp.maximum(done.astype(jnp.float32), sparse)
    return state.replace(pipeline_state=pg.data, obs=self._observe(pg), reward=reward,
                         done=done, metrics=metrics, info=info)

  @property
  def observation_size(self) -> dict[str, tuple[int, ...]]:
    s = self.config.image_size
    return {"image": (len(self.config.cameras), s, s, 3), "instruction": (),
            "proprio": (self.proprio_dim,)}

  @property
  def action_size(self) -> int:
    return self.config.action_horizon * self.action_dim

  @property
  def backend(self) -> str:
    return f"playground-{self.config.impl}"

  def instruction_table(self) -> list[str]:
    """The one instruction: the task's name in words (`obs["instruction"]` is always 0)."""
    return [self._words]

  def expert_action(self, state: State) -> jax.Array:
    """Playground tasks come without scripted experts."""
    raise NotImplementedError(f"{self.task_name} has no scripted expert")

  # -- Internals ----------------------------------------------------------------------------

  def _success(self, pg) -> jax.Array:
    if self._success_fn is None:
      return jnp.zeros((), bool)
    return jnp.asarray(self._success_fn(pg), bool)

  def _observe(self, pg) -> dict[str, jax.Array]:
    s, ncam = self.config.image_size, len(self.config.cameras)
    if self._render_ctx is None:
      image = jnp.zeros((ncam, s, s, 3), jnp.uint8)
    else:
      # Drawn from a refitted copy: the Playground state itself stays as the env made it.
      data = mjx.refit_bvh(self.mjx_model, pg.data, self._render_ctx)
      rgb, _, _ = mjx.render(self.mjx_model, data, self._render_ctx)
      if rgb.ndim == 2:
        # The state does not vary across the vmapped worlds (e.g. a reset that ignores its
        # rng), so the renderer ran once for all `num_worlds`: every row is the same image.
        rgb = rgb[0]
      image = jnp.stack([mjx.get_rgb(self._render_ctx, c, rgb) for c in self._camera_ids])
      image = jnp.round(image * 255.0).astype(jnp.uint8)
    return {"image": image, "instruction": jnp.zeros((), jnp.int32),
            "proprio": _flat_state_obs(pg.obs).astype(jnp.float32)}


def _flat_state_obs(obs) -> jax.Array:
  if not isinstance(obs, Mapping):
    return jnp.ravel(obs)
  if "state" in obs:
    return jnp.ravel(obs["state"])
  keys = sorted(k for k in obs if not k.startswith("pixels/"))
  return jnp.concatenate([jnp.ravel(obs[k]) for k in keys])


PREFIX = "playground:"  # `env.task=playground:CartpoleBalance` names a Playground task.
PACKAGE_HINT = "pip install playground==0.2.0 (or the project's dev extra: pip install -e .[dev])"


class PlaygroundMissingError(ImportError):
  """A Playground task was asked for without the `playground` package installed."""


def check_name(name: str) -> None:
  """Raises (one line) unless `name` is a dm_control_suite task that `make` can build.

  Raises:
    PlaygroundMissingError: the `playground` package is not installed.
    ValueError: an unknown task (the message lists the closest ones).
  """
  if not playground_available():
    raise PlaygroundMissingError(f"the Playground task {name!r} needs the playground package; "
                                 f"allowed: {PACKAGE_HINT}")
  from mujoco_playground import dm_control_suite  # pylint: disable=g-import-not-at-top

  if name not in dm_control_suite.ALL_ENVS:
    close = difflib.get_close_matches(name, dm_control_suite.ALL_ENVS, n=3, cutoff=0.3)
    raise ValueError(f"unknown Playground task {name!r}; allowed: dm_control_suite tasks "
                     f"(closest: {', '.join(close or dm_control_suite.ALL_ENVS[:3])})")


def make(name: str, config: mjx_env.EnvConfig, **kwargs) -> PlaygroundAdapter:
  """Builds Playground's dm_control_suite task `name` behind the adapter.

  Only the dm_control_suite tasks are offered: they ship their MJCF, whereas Playground's
  locomotion and manipulation tasks download robot assets on first use.

  Args:
    name: a dm_control_suite task, e.g. "CartpoleBalance".
    config: the adapter settings; `config.impl` selects Playground's MJX implementation.
    **kwargs: forwarded to `PlaygroundAdapter`.

  Returns:
    The single-world adapter.
  """
  check_name(name)
  from mujoco_playground import dm_control_suite  # pylint: disable=g-import-not-at-top

  env = dm_control_suite.load(name, config_overrides={"impl": config.impl})
  return PlaygroundAdapter(env, name, config, **kwargs)


def playground_available() -> bool:
  """Whether `make` can load Playground's tasks (the `playground` package is installed)."""
  return names.installed("mujoco_playground")


__all__ = ["PREFIX", "PlaygroundAdapter", "PlaygroundMissingError", "check_name", "make",
           "playground_available", "task_words"]
