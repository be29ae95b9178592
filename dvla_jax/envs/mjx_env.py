"""The tabletop environment base: MJX physics, batch rendering and the brax `Env` interface.

A task subclasses `TabletopEnv` and says how to lay out a new episode (`_sample_episode`) and
how to score a state (`_evaluate`). Everything else (chunked control, rendering, observation
assembly) lives here so every task behaves the same way.

Observations: `image` uint8 [cameras, S, S, 3], `instruction` int32 [] (an index into
`instruction_table()`: the env says which instruction it issued, the model side tokenises
it), `proprio` float32 [P], and `depth` when asked for.

The env is written for a single world; `wrap_for_training` vmaps it with brax's wrappers. The
MJX Warp renderer needs the number of worlds up front, so an env is built for one batch size
(`num_worlds`) and must be vmapped over exactly that many worlds.
"""

import dataclasses
import os
import sys
import tempfile
from typing import Any

from brax.envs import base as brax_base
import jax
import jax.numpy as jnp
import mujoco
from mujoco import mjx
import numpy as np
import warp

from dvla_jax.envs import scene

State = brax_base.State

# Warp prints a line per compiled kernel module otherwise.
warp.config.quiet = True
warp.config.log_level = warp.LOG_WARNING

# What Warp's native library prints to stderr when it starts on a machine without a GPU.
_NO_CUDA_LINE = b"Warp CUDA warning: Could not find or load the NVIDIA CUDA driver"


def init_warp_quietly() -> None:
  """Starts Warp now, dropping its "no CUDA driver" warning from stderr.

  Warp's native library prints that line unconditionally (not through `warp.config.quiet`) on
  every machine without an NVIDIA driver, where it says nothing the user needs. Anything else
  Warp writes to stderr while starting is passed through. Later `warp.init()` calls (MJX's)
  are no-ops, and so is this one after the first.
  """
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      warp.init()
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      kept = [line for line in captured.read().splitlines(keepends=True)
              if not line.startswith(_NO_CUDA_LINE)]
  if kept:
    sys.stderr.buffer.write(b"".join(kept))
    sys.stderr.flush()


# Proprioception (positions in metres) is multiplied by this in observations.
PROPRIO_SCALE = 4.0

# Depth images are divided by this many metres (and clipped to [0, 1]).
DEPTH_SCALE = 2.0


@dataclasses.dataclass(frozen=True)
class EnvConfig:
  """Settings shared by every tabletop task.

  Fields left at None take the task's own default (`TabletopEnv.defaults`): the two-finger
  tasks need a finer timestep and longer episodes than `touch_cube`. `env.config` is always
  the resolved copy.

  Attributes:
    num_worlds: batch size the renderer is built for (the vmapped batch must match).
    image_size: square camera resolution in pixels.
    cameras: camera names to render, each one image in `obs["image"]`.
    episode_length: policy steps per episode (the EpisodeWrapper enforces it).
    action_horizon: H, control steps executed per policy step (one action chunk).
    substeps: physics steps per control step.
    timestep: physics timestep in seconds.
    max_delta: metres the gripper target may move per control step at action 1.0.
    impl: MJX implementation ("warp" or "jax"; only warp can render).
    reward_shaping: weight k of a potential-based shaping term added to the sparse success
      reward: gamma * phi(s') - phi(s) with phi(s) = -k * distance-to-goal (metres) and
      phi = 0 once the episode has succeeded, so it never changes which policy is optimal
      (Ng et al. 1999). Over an episode it sums to about k * (first distance - last
      distance), under k * 0.6 for every task's workspace: k <= 1 keeps it below the +1 of
      success. 0 (the default) is the sparse 0/1 success reward alone.
    shaping_gamma: the gamma of that term; set it to the learner's discount.
    render: draw camera images; when False `obs["image"]` is all zeros (same shape).
    depth: also return `obs["depth"]`, float32 [cameras, S, S, 1], metres / DEPTH_SCALE.
  """

  num_worlds: int = 16
  image_size: int = 32
  cameras: tuple[str, ...] = ("front",)
  episode_length: int | None = None
  action_horizon: int = 2
  substeps: int | None = None
  timestep: float | None = None
  max_delta: float | None = None
  impl: str = "warp"
  reward_shaping: float = 0.0
  shaping_gamma: float = 0.99
  render: bool = True
  depth: bool = False

  def replace(self, **changes) -> "EnvConfig":
    return dataclasses.replace(self, **changes)


class TabletopEnv(brax_base.Env):
  """Base class of the tabletop tasks (single world; vmap with `wrap_for_training`)."""

  objects: tuple[scene.ObjectSpec, ...] = ()
  action_dim = 3  # Gripper target deltas in x, y, z.
  proprio_dim = 6
  # Task defaults for the EnvConfig fields left at None.
  defaults = {"episode_length": 16, "substeps": 2, "timestep": 0.02, "max_delta": 0.05}
  # Contacts allocated per world. MJX Warp's `naconmax` is a total over all worlds, and
  # contacts beyond it are silently dropped, so this is generous for a handful of objects.
  contacts_per_world = 64
  constraints_per_world = 160
  workspace = (scene.WORKSPACE_LOW, scene.WORKSPACE_HIGH)

  def __init__(self, config: EnvConfig):
    config = self.default_config(config)
    self.config = config
    self.mj_model = mujoco.MjModel.from_xml_string(self._scene_xml(config))
    names = [self.mj_model.camera(i).name for i in range(self.mj_model.ncam)]
    for cam in config.cameras:
      if cam not in names:
        raise ValueError(f"EnvConfig.cameras: unknown camera {cam!r}; allowed: {', '.join(names)}")
    if len(set(config.cameras)) != len(config.cameras):
      raise ValueError(f"EnvConfig.cameras={config.cameras!r}; allowed: each camera at most once")
    # On this process's own device: mjx would pick `jax.devices()[0]`, which in a run of
    # several processes belongs to process 0.
    self.mjx_model = _quiet_solver(mjx.put_model(self.mj_model, impl=config.impl,
                                                 device=jax.local_devices()[0]))
    self._home = self.mj_model.key("home")
    self._gripper_body = self.mj_model.body("gripper").id
    self._tcp_site = self.mj_model.site("tcp").id
    self._object_bodies = np.array([self.mj_model.body(o.name).id for o in self.objects])
    self._object_qadr = np.array(
        [self.mj_model.jnt_qposadr[self.mj_model.joint(f"{o.name}_free").id] for o in self.objects])
    self._camera_ids = [self.mj_model.camera(c).id for c in config.cameras]
    self._render_ctx = None
    if config.impl == "warp" and config.render:
      # The context object owns the Warp buffers: keep it alive as long as the env.
      self._render_context = mjx.create_render_context(
          mjm=self.mj_model, nworld=config.num_worlds,
          cam_res=(config.image_size, config.image_size), use_textures=False,
          use_shadows=False, render_rgb=True, render_depth=config.depth,
          # Ids in config order: the renderer numbers its images in this order.
          cam_active=[int(i) for i in self._camera_ids],
          enabled_geom_groups=[0, 1, 2])
      self._render_ctx = self._render_context.pytree()

  @classmethod
  def default_config(cls, config: EnvConfig | None = None, **changes) -> EnvConfig:
    """`config` (or EnvConfig()) with `changes` applied, None fields set to the task defaults.

    Raises:
      ValueError: one line naming the first impossible field and its allowed range.
    """
    config = (config or EnvConfig()).replace(**changes)
    config = config.replace(**{k: v for k, v in cls.defaults.items()
                               if getattr(config, k) is None})
    _check_config(config)
    return config

  @property
  def sys(self) -> mjx.Model:
    """The MJX model (brax's name for it: DomainRandomizationVmapWrapper swaps it per world)."""
    return self.mjx_model

  @sys.setter
  def sys(self, model: mjx.Model):
    self.mjx_model = model

  # -- Task hooks ---------------------------------------------------------------------------

  def instruction_table(self) -> list[str]:
    """All instruction strings the task can issue; `info["instruction"]` indexes this list."""
    raise NotImplementedError

  def _scene_xml(self, config: EnvConfig) -> str:
    return scene.tabletop_xml(list(self.objects), config.image_size, config.timestep)

  def _sample_episode(self, rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Returns (object qpos [num_objects, 7], task info) for a fresh episode."""
    raise NotImplementedError

  def _init_data(self, data: mjx.Data, info: dict[str, Any]) -> mjx.Data:
    """Sets whatever else the episode's layout needs (e.g. mocap targets) before forward."""
    del info
    return data

  def _evaluate(self, data: mjx.Data, info: dict[str, Any]):
    """Returns (success bool, distance-to-goal f32, extra metrics) for a state."""
    raise NotImplementedError

  def _control(self, ctrl: jax.Array, action: jax.Array) -> jax.Array:
    """The actuator targets after one control step's action [D] in [-1, 1]."""
    lo, hi = (jnp.asarray(w) for w in self.workspace)
    return jnp.clip(ctrl + action * self.config.max_delta, lo, hi)

  def _proprio(self, data: mjx.Data) -> jax.Array:
    return jnp.concatenate([data.site_xpos[self._tcp_site], data.ctrl])

  def _render_model(self, info: dict[str, Any]) -> mjx.Model:
    """The model the renderer draws with (a task may recolour geoms per world)."""
    del info
    return self.mjx_model

  # -- brax Env interface -------------------------------------------------------------------

  def reset(self, rng: jax.Array) -> State:
    layout_rng, info_rng = jax.random.split(rng)
    return self._start(*self._sample_episode(layout_rng), info_rng)

  def _start(self, obj_qpos: jax.Array, info: dict[str, Any], rng: jax.Array) -> State:
    """The first state of an episode laid out by `_sample_episode`'s (obj_qpos, info)."""
    qpos = jnp.asarray(self._home.qpos, jnp.float32)
    for i, adr in enumerate(self._object_qadr):
      qpos = qpos.at[adr:adr + 7].set(obj_qpos[i])
    data = mjx.make_data(self.mj_model, impl=self.config.impl,
                         naconmax=self.config.num_worlds * self.contacts_per_world,
                         njmax=self.constraints_per_world)
    data = data.replace(qpos=qpos, ctrl=jnp.asarray(self._home.ctrl, jnp.float32))
    data = mjx.forward(self.mjx_model, self._init_data(data, info))
    success, dist, extra = self._evaluate(data, info)
    info = {"task": dict(info, prev_dist=dist), "rng": rng,
            "success": jnp.zeros((), jnp.float32)}
    data, obs = self._observe(data, info)
    metrics = {"success": jnp.zeros(()), "distance": dist, **extra}
    return State(pipeline_state=data, obs=obs, reward=jnp.zeros(()), done=jnp.zeros(()),
                 metrics=metrics, info=info)

  def step(self, state: State, action: jax.Array) -> State:
    """Executes one action chunk `action` [H, D] in [-1, 1]."""
    action = jnp.clip(jnp.reshape(action, (self.config.action_horizon, self.action_dim)), -1, 1)
    task = state.info["task"]

    def control_step(carry, a):
      data, reached = carry
      data = data.replace(ctrl=self._control(data.ctrl, a))
      data = jax.lax.fori_loop(
          0, self.config.substeps, lambda _, d: mjx.step(self.mjx_model, d), data)
      success, _, _ = self._evaluate(data, task)
      return (data, reached | success), None

    (data, reached), _ = jax.lax.scan(
        control_step, (state.pipeline_state, jnp.zeros((), bool)), action)
    success, dist, extra = self._evaluate(data, task)
    reached = reached | success
    sparse = reached.astype(jnp.float32)
    reward = sparse
    if self.config.reward_shaping:
      # Potential-based: phi(s) = -k * distance, and phi of the terminal (success) state is 0.
      k, gamma = self.config.reward_shaping, self.config.shaping_gamma
      next_potential = jnp.where(reached, 0.0, -k * dist)
      reward = reward + gamma * next_potential + k * task["prev_dist"]
    info = dict(state.info, task=dict(task, prev_dist=dist), success=sparse)
    data, obs = self._observe(data, info)
    metrics = {"success": sparse, "distance": dist, **extra}
    # Success ends the episode; the EpisodeWrapper adds the time limit.
    return state.replace(pipeline_state=data, obs=obs, reward=reward, done=sparse,
                         metrics=metrics, info=info)

  @property
  def observation_size(self) -> dict[str, tuple[int, ...]]:
    s, ncam = self.config.image_size, len(self.config.cameras)
    size = {"image": (ncam, s, s, 3), "instruction": (), "proprio": (self.proprio_dim,)}
    if self.config.depth:
      size["depth"] = (ncam, s, s, 1)
    return size

  @property
  def action_size(self) -> int:
    return self.config.action_horizon * self.action_dim

  @property
  def backend(self) -> str:
    return f"mjx-{self.config.impl}"

  # -- Internals ----------------------------------------------------------------------------

  def _render(self, data: mjx.Data, info: dict[str, Any]):
    """Returns (data, uint8 RGB [ncam, S, S, 3], depth [ncam, S, S, 1] or None)."""
    s, ncam = self.config.image_size, len(self.config.cameras)
    depth = jnp.zeros((ncam, s, s, 1), jnp.float32) if self.config.depth else None
    if self._render_ctx is None:
      return data, jnp.zeros((ncam, s, s, 3), jnp.uint8), depth
    model = self._render_model(info)
    data = mjx.refit_bvh(model, data, self._render_ctx)
    rgb, raw_depth, data = mjx.render(model, data, self._render_ctx)
    image = jnp.stack([mjx.get_rgb(self._render_ctx, i, rgb) for i in range(ncam)])
    if self.config.depth:
      depth = jnp.stack([mjx.get_depth(self._render_ctx, i, raw_depth, DEPTH_SCALE)
                         for i in range(ncam)])
    return data, jnp.round(image * 255.0).astype(jnp.uint8), depth

  def _observe(self, data: mjx.Data, info: dict[str, Any]) -> tuple[mjx.Data, dict[str, Any]]:
    data, image, depth = self._render(data, info)
    # The instruction as its index into `instruction_table()`: the model side tokenises.
    instruction = jnp.asarray(info["task"]["instruction"], jnp.int32)
    # Metres are small numbers; scaled so the workspace spans about [-1, 1] for the policy.
    proprio = self._proprio(data).astype(jnp.float32) * PROPRIO_SCALE
    obs = {"image": image, "instruction": instruction, "proprio": proprio}
    if depth is not None:
      obs["depth"] = depth
    return data, obs

  def evaluate(self, state: State) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """(success, distance, extra metrics) of one world's state, as the reward sees it now."""
    return self._evaluate(state.pipeline_state, state.info["task"])

  def expert_action(self, state: State) -> jax.Array:
    """Scripted expert with privileged state: the action chunk [H * D] for one world."""
    raise NotImplementedError

  def object_pos(self, data: mjx.Data) -> jax.Array:
    """World positions of the objects, [num_objects, 3]."""
    return data.xpos[self._object_bodies]

  def tcp_pos(self, data: mjx.Data) -> jax.Array:
    return data.site_xpos[self._tcp_site]


def _check_config(c: EnvConfig) -> None:
  """Raises ValueError with one line naming the first impossible EnvConfig field."""
  checks = (
      ("num_worlds", c.num_worlds >= 1, ">= 1"),
      ("image_size", 16 <= c.image_size <= 256, "16..256"),
      ("cameras", len(c.cameras) >= 1 and not isinstance(c.cameras, str),
       "a non-empty tuple of camera names"),
      ("episode_length", c.episode_length >= 1, ">= 1"),
      ("action_horizon", c.action_horizon >= 1, ">= 1"),
      ("substeps", c.substeps >= 1, ">= 1"),
      ("timestep", 0 < c.timestep <= 0.05, "(0, 0.05]"),
      ("max_delta", 0 < c.max_delta <= 0.2, "(0, 0.2]"),
      ("impl", c.impl in ("warp", "jax"), "'warp' or 'jax'"),
      ("reward_shaping", 0 <= c.reward_shaping <= 1, "[0, 1]"),
      ("shaping_gamma", 0 < c.shaping_gamma <= 1, "(0, 1]"),
      ("depth", not (c.depth and c.impl != "warp"), "False unless impl='warp'"),
  )
  for field, ok, allowed in checks:
    if not ok:
      raise ValueError(f"EnvConfig.{field}={getattr(c, field)!r}; allowed: {allowed}")


def _quiet_solver(mx: mjx.Model) -> mjx.Model:
  """Stops MJX Warp printing a warning whenever the solver uses all its iterations.

  A few iterations are a deliberate speed trade-off here; buffer overflows still warn.
  """
  impl = getattr(mx.opt, "_impl", None)
  if impl is None or not hasattr(impl, "warn_overflow"):
    return mx
  from mujoco.mjx.third_party.mujoco_warp._src import types as mjw_types  # pylint: disable=g-import-not-at-top
  quiet = mjw_types.OverflowType.ITERATIONS | mjw_types.OverflowType.LS_ITERATIONS
  flags = int(impl.warn_overflow) & ~int(quiet)
  return mx.replace(opt=mx.opt.replace(_impl=impl.replace(warn_overflow=flags)))


def sample_separated_xy(rng: jax.Array, n: int, half_extent: float, min_sep: float) -> jax.Array:
  """Samples `n` xy positions in a square with pairwise distance >= min_sep (rejection-free).

  Positions are drawn on a jittered grid of cells larger than `min_sep`, so they never overlap
  and the sampler is a fixed amount of work under `jit`.

  Args:
    rng: PRNG key.
    n: number of positions.
    half_extent: positions lie in [-half_extent, half_extent]^2.
    min_sep: minimum distance between any two positions.

  Returns:
    [n, 2] float32 positions.
  """
  cells = int(np.floor(2 * half_extent / min_sep))
  if cells * cells < n:
    raise ValueError(f"cannot place {n} objects {min_sep} m apart in a {2 * half_extent} m square")
  cell = 2 * half_extent / cells
  perm_rng, jitter_rng = jax.random.split(rng)
  idx = jax.random.permutation(perm_rng, cells * cells)[:n]
  ij = jnp.stack([idx // cells, idx % cells], axis=-1).astype(jnp.float32)
  slack = cell - min_sep
  jitter = jax.random.uniform(jitter_rng, (n, 2), minval=-slack / 2, maxval=slack / 2)
  return -half_extent + (ij + 0.5) * cell + jitter
