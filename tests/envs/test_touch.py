"""The first task, end to end through brax's wrappers: shapes, determinism, rendering, expert."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dvla_jax import envs

B = 8


@pytest.fixture(scope="module")
def env_fns():
  env = envs.make("touch_cube", envs.EnvConfig(num_worlds=B, image_size=32))
  venv = envs.wrap_for_training(env)
  reset = jax.jit(lambda rng: venv.reset(jax.random.split(rng, B)))
  step = jax.jit(venv.step)
  expert = jax.jit(jax.vmap(env.expert_action))
  return env, reset, step, expert


def test_reset_and_step_shapes(env_fns):
  env, reset, step, _ = env_fns
  state = reset(jax.random.PRNGKey(0))
  assert state.obs["image"].shape == (B, 1, 32, 32, 3)
  assert state.obs["image"].dtype == jnp.uint8
  # The instruction as an index into the env's table (the model side tokenises it).
  assert state.obs["instruction"].shape == (B,) and state.obs["instruction"].dtype == jnp.int32
  assert env.observation_size["instruction"] == ()
  assert state.obs["proprio"].shape == (B, env.proprio_dim)
  assert env.action_size == env.config.action_horizon * env.action_dim
  nxt = step(state, jnp.zeros((B, env.action_size)))
  assert nxt.reward.shape == (B,) and nxt.done.shape == (B,)
  for leaf in jax.tree.leaves(nxt.obs):
    assert np.all(np.isfinite(np.asarray(leaf, np.float32)))
  # The image is not blank: table, cubes and gripper all show.
  assert len(np.unique(np.asarray(state.obs["image"][0]).reshape(-1, 3), axis=0)) > 4


def test_same_seed_same_episode(env_fns):
  _, reset, step, _ = env_fns
  actions = jax.random.uniform(jax.random.PRNGKey(1), (B, 6), minval=-1, maxval=1)
  a = step(reset(jax.random.PRNGKey(7)), actions)
  b = step(reset(jax.random.PRNGKey(7)), actions)
  c = reset(jax.random.PRNGKey(8))
  np.testing.assert_array_equal(np.asarray(a.obs["image"]), np.asarray(b.obs["image"]))
  np.testing.assert_allclose(np.asarray(a.pipeline_state.qpos), np.asarray(b.pipeline_state.qpos))
  assert not np.array_equal(np.asarray(a.obs["image"]), np.asarray(c.obs["image"]))


def test_layout_and_instruction_are_randomised(env_fns):
  env, reset, _, _ = env_fns
  state = reset(jax.random.PRNGKey(3))
  pos = np.asarray(jax.vmap(env.object_pos)(state.pipeline_state))
  assert np.std(pos[:, 0, 0]) > 0.02  # the red cube moves between worlds
  table = env.instruction_table()
  texts = [table[i] for i in np.asarray(state.obs["instruction"])]
  assert len(set(texts)) > 1
  targets = np.asarray(state.info["task"]["target"])
  for text, target in zip(texts, targets, strict=True):
    assert ("red", "green", "blue")[target] in text


def test_image_follows_the_physics(env_fns):
  """Moving the gripper over the table changes the pixels where it goes."""
  env, reset, step, _ = env_fns
  state = reset(jax.random.PRNGKey(4))
  before = np.asarray(state.obs["image"], np.int32)
  move = jnp.tile(jnp.array([1.0, 1.0, -1.0]), (B, env.config.action_horizon))
  for _ in range(3):
    state = step(state, move)
  after = np.asarray(state.obs["image"], np.int32)
  changed = np.abs(after - before).sum(-1) > 30
  assert changed.reshape(B, -1).mean(-1).min() > 0.005
  # And a zero action on a settled scene leaves the image (almost) unchanged.
  still = step(state, jnp.zeros((B, env.action_size)))
  still_changed = np.abs(np.asarray(still.obs["image"], np.int32) - after).sum(-1) > 30
  assert still_changed.mean() < changed.mean()


def test_success_false_at_reset_true_for_expert(env_fns):
  env, reset, step, expert = env_fns
  state = reset(jax.random.PRNGKey(5))
  assert not np.any(np.asarray(state.metrics["success"]))
  success = np.zeros(B)
  for _ in range(env.config.episode_length):
    state = step(state, expert(state))
    success = np.maximum(success, np.asarray(state.metrics["success"]))
  assert success.mean() >= 0.9


def test_unknown_task_names_closest():
  with pytest.raises(envs.UnknownTaskError, match="touch_cube"):
    envs.check_task("touch_cub")


def test_potential_based_shaping_never_outweighs_success():
  """Shaping k * (d - gamma * d') with phi = 0 after success: it sums to about k times the
  distance covered, so with k <= 1 a failed episode earns less than a successful one."""
  k, gamma = 1.0, 0.99
  env = envs.make("touch_cube", envs.EnvConfig(num_worlds=B, image_size=32, render=False,
                                               reward_shaping=k, shaping_gamma=gamma))
  venv = envs.wrap_for_training(env)
  state = jax.jit(lambda rng: venv.reset(jax.random.split(rng, B)))(jax.random.PRNGKey(9))
  step, expert = jax.jit(venv.step), jax.jit(jax.vmap(env.expert_action))
  # Half the worlds follow the expert, half drift away from every cube (up and to one side).
  away = jnp.tile(jnp.array([1.0, 1.0, 1.0]), (B, env.config.action_horizon))
  follow = (jnp.arange(B) < B // 2)[:, None]
  totals, alive = np.zeros(B), np.ones(B)
  for _ in range(env.config.episode_length):
    prev = np.asarray(state.info["task"]["prev_dist"])
    state = step(state, jnp.where(follow, expert(state), away))
    dist, success = np.asarray(state.metrics["distance"]), np.asarray(state.metrics["success"])
    want = success + np.where(success > 0, 0.0, -gamma * k * dist) + k * prev
    np.testing.assert_allclose(np.asarray(state.reward)[alive > 0], want[alive > 0], atol=1e-5)
    totals += alive * np.asarray(state.reward)
    alive *= 1.0 - np.asarray(state.done)
  assert np.all(totals[: B // 2] > 1.0) and np.all(totals[B // 2:] < 0.5)
  with pytest.raises(ValueError, match="reward_shaping"):
    envs.EnvConfig(reward_shaping=2.0) and envs.make("touch_cube",
                                                     envs.EnvConfig(reward_shaping=2.0))
