"""Domain randomisation: per-world physics and looks differ with it and match without it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dvla_jax import envs
from dvla_jax.envs import randomization

B = 4


@pytest.fixture(scope="module")
def env():
  return envs.make("touch_cube", envs.EnvConfig(num_worlds=B, image_size=32))


def _same_layout_keys():
  # Every world resets from the same key, so any difference between worlds comes from DR.
  return jnp.tile(jax.random.PRNGKey(3)[None], (B, 1))


def test_drawn_fields_differ_per_world(env):
  model, in_axes = randomization.randomization_fn(
      env.mjx_model, jax.random.PRNGKey(0), B, env.mj_model)
  assert in_axes.geom_friction == 0 and in_axes.body_mass == 0 and in_axes.qpos0 is None
  friction = np.asarray(model.geom_friction)
  mass = np.asarray(model.body_mass)
  assert friction.shape == (B,) + np.shape(env.mjx_model.geom_friction)
  assert np.all(np.std(friction[..., 0], axis=0) > 0)  # every geom, across worlds
  cube = env.mj_model.body("red_cube").id
  assert np.std(mass[:, cube]) > 0
  # Only free bodies change mass: the gripper's stays.
  gripper = env.mj_model.body("gripper").id
  np.testing.assert_allclose(mass[:, gripper], env.mj_model.body_mass[gripper], rtol=1e-6)
  lo, hi = randomization.RandomizationConfig().mass_scale
  ratio = mass[:, cube] / env.mj_model.body_mass[cube]
  assert np.all((ratio >= lo) & (ratio <= hi))
  # Named object colours stay close to their names; directions stay unit vectors.
  rgba = np.asarray(model.geom_rgba)
  geom = env.mj_model.geom("red_cube_geom").id
  assert np.abs(rgba[:, geom, :3] - env.mj_model.geom_rgba[geom, :3]).max() <= 0.06 + 1e-6
  np.testing.assert_allclose(np.linalg.norm(np.asarray(model.light_dir), axis=-1), 1.0, rtol=1e-5)


def test_bad_range_fails_in_one_line():
  with pytest.raises(ValueError, match="mass_scale"):
    randomization.RandomizationConfig(mass_scale=(1.2, 0.8))


def test_worlds_differ_with_dr_and_match_without(env):
  dr = randomization.wrap_env(env, True, jax.random.PRNGKey(0))
  plain = randomization.wrap_env(env, False)
  keys = _same_layout_keys()

  state = jax.jit(plain.reset)(keys)
  image = np.asarray(state.obs["image"], np.int32)
  for i in range(1, B):
    np.testing.assert_array_equal(image[i], image[0])

  state = jax.jit(dr.reset)(keys)
  qpos = np.asarray(state.pipeline_state.qpos)
  np.testing.assert_array_equal(qpos[1:], np.broadcast_to(qpos[0], qpos[1:].shape))
  image = np.asarray(state.obs["image"], np.int32)
  for i in range(1, B):
    # Same layout, different colours and light: a visible share of the pixels changes.
    assert (np.abs(image[i] - image[0]).sum(-1) > 10).mean() > 0.2

  step = jax.jit(dr.step)
  action = jnp.tile(jnp.array([0.5, 0.5, -1.0]), (B, env.config.action_horizon))
  for _ in range(3):
    state = step(state, action)
  objects = np.asarray(jax.vmap(env.object_pos)(state.pipeline_state))
  assert np.all(np.isfinite(objects))
  # Same actions from the same state: the objects settle differently under different masses.
  spread = np.abs(objects - objects[:1]).max(axis=(1, 2))
  assert np.all(spread[1:] > 1e-5)


def test_needs_rng_to_randomize(env):
  with pytest.raises(ValueError, match="rng"):
    randomization.wrap_env(env, True)
