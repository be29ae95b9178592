"""Domain randomisation of the tabletop scene: friction, mass, colours and lighting per world.

brax's `DomainRandomizationVmapWrapper` vmaps the env over a batched physics model: every world
gets its own copy of the randomised fields (`in_axes=0`) and shares the rest (`in_axes=None`).
brax swaps that model in through the env's `sys` attribute, which `TabletopEnv` maps onto the
`mjx_model` it steps and renders. The swap happens while the env is traced (inside `jit`), so
the compiled step reads the per-world fields.

Measured with MJX Warp on CPU (mujoco-mjx 3.17, warp-lang 1.19): stepping and the batch
renderer both accept per-world `geom_friction`, `body_mass`/`body_inertia`, `geom_rgba`,
`mat_rgba`, `light_diffuse`, `light_ambient` and `light_dir` under `vmap` with `in_axes=0`;
each world's physics and image follow its own values. The batch renderer is built for
`num_worlds` worlds, so the randomised batch has exactly that many entries.

What is randomised (`RandomizationConfig`):
  - sliding friction of every geom, scaled per world and geom;
  - mass and inertia of every free body (the objects), scaled together;
  - colours: materials (table, floor, gripper) freely, and geoms coloured by their own rgba
    (objects, target pads) only slightly, so "the red cube" stays red;
  - the light's diffuse strength, ambient level and direction.

Example:
  venv = randomization.wrap_for_training_randomized(env, jax.random.key(0))
  state = venv.reset(jax.random.split(jax.random.key(1), env.config.num_worlds))
"""

import dataclasses
import functools
from typing import Any

from brax.envs.wrappers import training as brax_wrappers
import jax
import jax.numpy as jnp
import mujoco
import numpy as np

from dvla_jax.envs import mjx_env
from dvla_jax.envs import registry


@dataclasses.dataclass(frozen=True)
class RandomizationConfig:
  """Ranges of the per-world randomisation (uniform draws).

  Attributes:
    friction_scale: range of the factor on each geom's sliding friction.
    mass_scale: range of the factor on each free body's mass and inertia.
    material_rgb_jitter: largest change of a material's r, g or b (table, floor, gripper).
    object_rgb_jitter: largest change of an own-rgba geom's r, g or b (objects, pads): small,
      because instructions name objects by colour.
    light_diffuse_scale: range of the factor on each light's diffuse colour.
    light_ambient: range of each light's ambient level (grey).
    light_dir_jitter: standard deviation of the noise added to each light's unit direction.
  """

  friction_scale: tuple[float, float] = (0.7, 1.3)
  mass_scale: tuple[float, float] = (0.7, 1.3)
  material_rgb_jitter: float = 0.2
  object_rgb_jitter: float = 0.06
  light_diffuse_scale: tuple[float, float] = (0.6, 1.2)
  light_ambient: tuple[float, float] = (0.0, 0.15)
  light_dir_jitter: float = 0.2

  def __post_init__(self):
    for name in ("friction_scale", "mass_scale", "light_diffuse_scale", "light_ambient"):
      lo, hi = getattr(self, name)
      if not 0.0 <= lo <= hi:
        raise ValueError(f"RandomizationConfig.{name}={(lo, hi)}; allowed: 0 <= low <= high")
    for name in ("material_rgb_jitter", "object_rgb_jitter", "light_dir_jitter"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"RandomizationConfig.{name}={getattr(self, name)}; allowed: 0..1")


RANDOMIZED_FIELDS = ("geom_friction", "body_mass", "body_inertia", "geom_rgba", "mat_rgba",
                     "light_diffuse", "light_ambient", "light_dir")


def randomization_fn(mjx_model, rng: jax.Array, num_worlds: int, mj_model: mujoco.MjModel,
                     config: RandomizationConfig = RandomizationConfig()) -> tuple[Any, Any]:
  """Draws `num_worlds` randomised copies of the fields in `RANDOMIZED_FIELDS`.

  Args:
    mjx_model: the env's MJX model (either implementation).
    rng: PRNG key of the draw.
    num_worlds: batch size (must equal the env's `config.num_worlds` when it renders).
    mj_model: the matching MuJoCo model; says which bodies are free and which geoms use
      materials.
    config: the ranges.

  Returns:
    (batched model, in_axes): the model with a leading [num_worlds] axis on the randomised
    fields, and a model-shaped tree of vmap axes (0 on those fields, None elsewhere).
  """
  keys = jax.random.split(rng, 8)
  n = num_worlds

  def uniform(key, shape, bounds):
    return jax.random.uniform(key, (n,) + shape, minval=bounds[0], maxval=bounds[1])

  free_body = np.zeros(mj_model.nbody, bool)
  free_body[mj_model.jnt_bodyid[mj_model.jnt_type == mujoco.mjtJoint.mjJNT_FREE]] = True
  free_body = jnp.asarray(free_body)
  own_rgba = jnp.asarray(mj_model.geom_matid < 0)

  friction = jnp.asarray(mjx_model.geom_friction)
  friction = jnp.broadcast_to(friction, (n,) + friction.shape)
  fscale = uniform(keys[0], (mj_model.ngeom,), config.friction_scale)
  friction = friction.at[..., 0].multiply(fscale)

  mscale = jnp.where(free_body, uniform(keys[1], (mj_model.nbody,), config.mass_scale), 1.0)
  mass = jnp.asarray(mjx_model.body_mass)[None] * mscale
  inertia = jnp.asarray(mjx_model.body_inertia)[None] * mscale[..., None]

  rgba = jnp.broadcast_to(jnp.asarray(mjx_model.geom_rgba), (n, mj_model.ngeom, 4))
  jitter = jnp.where(own_rgba[:, None], config.object_rgb_jitter, 0.0)
  noise = jax.random.uniform(keys[2], (n, mj_model.ngeom, 3), minval=-1.0, maxval=1.0)
  rgba = rgba.at[..., :3].set(jnp.clip(rgba[..., :3] + jitter * noise, 0.0, 1.0))

  mat = jnp.broadcast_to(jnp.asarray(mjx_model.mat_rgba), (n, mj_model.nmat, 4))
  noise = jax.random.uniform(keys[3], (n, mj_model.nmat, 3), minval=-1.0, maxval=1.0)
  mat = mat.at[..., :3].set(jnp.clip(mat[..., :3] + config.material_rgb_jitter * noise, 0, 1))

  nlight = mj_model.nlight
  diffuse = jnp.asarray(mjx_model.light_diffuse)[None] * uniform(
      keys[4], (nlight, 1), config.light_diffuse_scale)
  ambient = jnp.broadcast_to(uniform(keys[5], (nlight, 1), config.light_ambient), (n, nlight, 3))
  direction = jnp.asarray(mjx_model.light_dir)[None] + config.light_dir_jitter * (
      jax.random.normal(keys[6], (n, nlight, 3)))
  direction = direction / jnp.maximum(jnp.linalg.norm(direction, axis=-1, keepdims=True), 1e-6)

  batched = mjx_model.replace(
      geom_friction=friction, body_mass=mass, body_inertia=inertia, geom_rgba=rgba,
      mat_rgba=mat, light_diffuse=jnp.clip(diffuse, 0.0, 1.0), light_ambient=ambient,
      light_dir=direction)
  in_axes = jax.tree.map(lambda _: None, mjx_model)
  in_axes = in_axes.replace(**{name: 0 for name in RANDOMIZED_FIELDS})
  return batched, in_axes


def wrap_for_training_randomized(env: mjx_env.TabletopEnv, rng: jax.Array,
                                 config: RandomizationConfig = RandomizationConfig()):
  """`registry.wrap_for_training` with a randomised physics model per world.

  Each of the `env.config.num_worlds` worlds keeps its draw for the whole run (brax's
  convention); auto-reset restarts episodes in the same world with the same draw.

  Args:
    env: single-world tabletop env.
    rng: PRNG key of the draw.
    config: the ranges.

  Returns:
    The batched, time-limited, auto-resetting env (brax wrappers).
  """
  draw = functools.partial(randomization_fn, rng=rng, num_worlds=env.config.num_worlds,
                           mj_model=env.mj_model, config=config)
  venv = brax_wrappers.DomainRandomizationVmapWrapper(env, draw)
  venv = brax_wrappers.EpisodeWrapper(venv, env.config.episode_length, action_repeat=1)
  return registry.AutoResetWrapper(venv)


def wrap_env(env: mjx_env.TabletopEnv, domain_randomization: bool, rng: jax.Array | None = None,
             config: RandomizationConfig = RandomizationConfig()):
  """The training env the run config asks for: randomised per world or not.

  Args:
    env: single-world tabletop env.
    domain_randomization: the run's `env.domain_randomization` switch.
    rng: PRNG key of the draw (required when randomising).
    config: the ranges.

  Returns:
    The batched training env.
  """
  if not domain_randomization:
    return registry.wrap_for_training(env)
  if rng is None:
    raise ValueError("domain_randomization=True needs an rng for the draw")
  return wrap_for_training_randomized(env, rng, config)
