"""The tabletop environment base: MJX physics, batch rendering and the brax `Env` interface.

A task subclasses `TabletopEnv` and says how to lay out a new episode (`_sample_episode`) and
how to score a state (`_evaluate`). Everything else (chunked control, rendering, observation
assembly) lives here so every task behaves the same way.

The env is written for a single world; `wrap_for_training` vmaps it with brax's wrappers. The
MJX Warp renderer needs the number of worlds up front, so an env is built for one batch size
(`num_worlds`) and must be vmapped over exactly that many worlds.
"""

import dataclasses
from typing import Any

from brax.envs import base as brax_base
import jax
import jax.numpy as jnp
import mujoco
from mujoco import mjx
import numpy as np
import warp

from dvla_jax.envs import scene
from dvla_jax.models import tokenizer

State = brax_base.State

# Warp prints a line per compiled kernel module otherwise.
warp.config.quiet = True

# Contacts allocated per world. MJX Warp's `naconmax` is a total over all worlds, and contacts
# beyond it are silently dropped, so this is generous for a handful of objects.
_CONTACTS_PER_WORLD = 64
_CONSTRAINTS_PER_WORLD = 160


@dataclasses.dataclass(frozen=True)
class EnvConfig:
  """Settings shared by every tabletop task.

  Attributes:
    num_worlds: batch size the renderer is built for (the vmapped batch must match).
    image_size: square camera resolution in pixels.
    cameras: camera names to render, each one image in `obs["image"]`.
    episode_length: policy steps per episode (the EpisodeWrapper enforces it).
    action_horizon: H, control steps executed per policy step (one action chunk).
    substeps: physics steps per control step.
    timestep: physics timestep in seconds.
    max_delta: metres the gripper target may move per control step at action 1.0.
    max_text_len: instruction token length.
    impl: MJX implementation ("warp" or "jax"; only warp can render).
    dense_reward: add the shaped distance-progress reward to the sparse success reward.
  """

  num_worlds: int = 16
  image_size: int = 32
  cameras: tuple[str, ...] = ("front",)
  episode_length: int = 16
  action_horizon: int = 2
  substeps: int = 2
  timestep: float = 0.02
  max_delta: float = 0.05
  max_text_len: int = 24
  impl: str = "warp"
  dense_reward: bool = True


class TabletopEnv(brax_base.Env):
  """Base class of the tabletop tasks (single world; vmap with `wrap_for_training`)."""

  objects: tuple[scene.ObjectSpec, ...] = ()
  action_dim = 3  # Gripper target deltas in x, y, z.

  def __init__(self, config: EnvConfig):
    if config.num_worlds < 1:
      raise ValueError(f"num_worlds={config.num_worlds}; allowed: >= 1")
    if not 16 <= config.image_size <= 256:
      raise ValueError(f"image_size={config.image_size}; allowed: 16..256")
    if config.episode_length < 1 or config.action_horizon < 1 or config.substeps < 1:
      raise ValueError("episode_length, action_horizon and substeps must be >= 1")
    if config.impl not in ("warp", "jax"):
      raise ValueError(f"impl={config.impl!r}; allowed: 'warp', 'jax'")
    self.config = config
    self.mj_model = mujoco.MjModel.from_xml_string(
        scene.tabletop_xml(list(self.objects), config.image_size, config.timestep))
    self.mjx_model = _quiet_solver(mjx.put_model(self.mj_model, impl=config.impl))
    self._home = self.mj_model.key("home")
    self._gripper_body = self.mj_model.body("gripper").id
    self._tcp_site = self.mj_model.site("tcp").id
    self._object_bodies = np.array([self.mj_model.body(o.name).id for o in self.objects])
    self._object_qadr = np.array(
        [self.mj_model.jnt_qposadr[self.mj_model.joint(f"{o.name}_free").id] for o in self.objects])
    self._camera_ids = [self.mj_model.camera(c).id for c in config.cameras]
    self._render_ctx = None
    if config.impl == "warp":
      # The context object owns the Warp buffers: keep it alive as long as the env.
      self._render_context = mjx.create_render_context(
          mjm=self.mj_model, nworld=config.num_worlds,
          cam_res=(config.image_size, config.image_size), use_textures=False,
          use_shadows=False, render_rgb=True, render_depth=False,
          cam_active=[i in self._camera_ids for i in range(self.mj_model.ncam)],
          enabled_geom_groups=[0, 1, 2])
      self._render_ctx = self._render_context.pytree()
    self._instructions = np.stack(
        [tokenizer.encode(t, config.max_text_len) for t in self.instruction_table()])

  # -- Task hooks ---------------------------------------------------------------------------

  def instruction_table(self) -> list[str]:
    """All instruction strings the task can issue; `info["instruction"]` indexes this list."""
    raise NotImplementedError

  def _sample_episode(self, rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Returns (object qpos [num_objects, 7], task info) for a fresh episode."""
    raise NotImplementedError

  def _evaluate(self, data: mjx.Data, info: dict[str, Any]):
    """Returns (success bool, distance-to-goal f32, extra metrics) for a state."""
    raise NotImplementedError

  # -- brax Env interface -------------------------------------------------------------------

  def reset(self, rng: jax.Array) -> State:
    layout_rng, info_rng = jax.random.split(rng)
    obj_qpos, info = self._sample_episode(layout_rng)
    qpos = jnp.asarray(self._home.qpos, jnp.float32)
    for i, adr in enumerate(self._object_qadr):
      qpos = qpos.at[adr:adr + 7].set(obj_qpos[i])
    data = mjx.make_data(self.mj_model, impl=self.config.impl,
                         naconmax=self.config.num_worlds * _CONTACTS_PER_WORLD,
                         njmax=_CONSTRAINTS_PER_WORLD)
    data = data.replace(qpos=qpos, ctrl=jnp.asarray(self._home.ctrl, jnp.float32))
    data = mjx.forward(self.mjx_model, data)
    success, dist, extra = self._evaluate(data, info)
    info = {"task": dict(info, prev_dist=dist), "rng": info_rng,
            "success": jnp.zeros((), jnp.float32)}
    data, image = self._render(data)
    obs = self._observe(data, image, info)
    metrics = {"success": jnp.zeros(()), "distance": dist, **extra}
    return State(pipeline_state=data, obs=obs, reward=jnp.zeros(()), done=jnp.zeros(()),
                 metrics=metrics, info=info)

  def step(self, state: State, action: jax.Array) -> State:
    """Executes one action chunk `action` [H, D] in [-1, 1]."""
    action = jnp.clip(jnp.reshape(action, (self.config.action_horizon, self.action_dim)), -1, 1)
    task = state.info["task"]
    lo = jnp.asarray(scene.WORKSPACE_LOW)
    hi = jnp.asarray(scene.WORKSPACE_HIGH)

    def control_step(carry, a):
      data, reached = carry
      ctrl = jnp.clip(data.ctrl + a * self.config.max_delta, lo, hi)
      data = data.replace(ctrl=ctrl)
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
    if self.config.dense_reward:
      reward = reward + 10.0 * (task["prev_dist"] - dist)
    info = dict(state.info, task=dict(task, prev_dist=dist), success=sparse)
    data, image = self._render(data)
    obs = self._observe(data, image, info)
    metrics = {"success": sparse, "distance": dist, **extra}
    # Success ends the episode; the EpisodeWrapper adds the time limit.
    return state.replace(pipeline_state=data, obs=obs, reward=reward, done=sparse,
                         metrics=metrics, info=info)

  @property
  def observation_size(self) -> dict[str, tuple[int, ...]]:
    s = self.config.image_size
    return {"image": (len(self.config.cameras), s, s, 3), "text": (self.config.max_text_len,),
            "proprio": (self.proprio_dim,)}

  @property
  def action_size(self) -> int:
    return self.config.action_horizon * self.action_dim

  @property
  def backend(self) -> str:
    return f"mjx-{self.config.impl}"

  proprio_dim = 6

  # -- Internals ----------------------------------------------------------------------------

  def _render(self, data: mjx.Data) -> tuple[mjx.Data, jax.Array]:
    s, ncam = self.config.image_size, len(self.config.cameras)
    if self._render_ctx is None:
      return data, jnp.zeros((ncam, s, s, 3), jnp.uint8)
    data = mjx.refit_bvh(self.mjx_model, data, self._render_ctx)
    rgb, _, data = mjx.render(self.mjx_model, data, self._render_ctx)
    images = [mjx.get_rgb(self._render_ctx, cam, rgb) for cam in self._camera_ids]
    image = jnp.stack(images, axis=0)
    return data, jnp.round(image * 255.0).astype(jnp.uint8)

  def _observe(self, data: mjx.Data, image: jax.Array, info: dict[str, Any]) -> dict[str, Any]:
    tcp = data.site_xpos[self._tcp_site]
    proprio = jnp.concatenate([tcp, data.ctrl]).astype(jnp.float32)
    text = jnp.asarray(self._instructions)[info["task"]["instruction"]]
    return {"image": image, "text": text, "proprio": proprio}

  def expert_action(self, state: State) -> jax.Array:
    """Scripted expert with privileged state: the action chunk [H * D] for one world."""
    raise NotImplementedError

  def object_pos(self, data: mjx.Data) -> jax.Array:
    """World positions of the objects, [num_objects, 3]."""
    return data.xpos[self._object_bodies]

  def tcp_pos(self, data: mjx.Data) -> jax.Array:
    return data.site_xpos[self._tcp_site]


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
