"""Playground interop: a Playground-style env trained through dvla_jax's env interface."""

from typing import Any

from flax import struct
import jax
import jax.numpy as jnp
import mujoco
from mujoco import mjx
import numpy as np
import pytest

from dvla_jax import envs
from dvla_jax.envs import playground

B = 2

_XML = """
<mujoco>
  <option timestep="0.02"/>
  <worldbody>
    <light pos="0 0 2" dir="0 0 -1" directional="true"/>
    <camera name="above" pos="0 0 1.2" xyaxes="1 0 0 0 1 0" fovy="60"/>
    <geom type="plane" size="1 1 0.1" rgba="0.3 0.3 0.3 1" contype="0" conaffinity="0"/>
    <body name="puck">
      <joint name="x" type="slide" axis="1 0 0" range="-0.4 0.4" damping="2"/>
      <geom type="sphere" size="0.08" rgba="0.9 0.1 0.1 1" mass="0.2" contype="0"
            conaffinity="0"/>
    </body>
  </worldbody>
  <actuator><motor joint="x" gear="10" ctrlrange="-1 1"/></actuator>
</mujoco>
"""


@struct.dataclass
class PgState:
  """The fields of `mujoco_playground.State`."""

  data: mjx.Data
  obs: jax.Array
  reward: jax.Array
  done: jax.Array
  metrics: dict[str, jax.Array]
  info: dict[str, Any]


class SlideToTarget:
  """A tiny env written the Playground way: push a puck along x towards a random target."""

  action_size = 1

  def __init__(self):
    self.mj_model = mujoco.MjModel.from_xml_string(_XML)
    self.mjx_model = mjx.put_model(self.mj_model, impl="warp")

  def reset(self, rng):
    # njmax=0 stops MJX Warp from integrating at all (qpos stays put), so leave room.
    data = mjx.make_data(self.mj_model, impl="warp", naconmax=0, njmax=4)
    data = mjx.forward(self.mjx_model, data)
    target = jax.random.uniform(rng, (), minval=-0.3, maxval=0.3)
    info = {"target": target, "steps": jnp.zeros((), jnp.int32)}
    return PgState(data, self._obs(data, info), jnp.zeros(()), jnp.zeros(()),
                   {"gap": jnp.abs(target)}, info)

  def step(self, state, action):
    data = mjx.step(self.mjx_model, state.data.replace(ctrl=action))
    info = dict(state.info, steps=state.info["steps"] + 1)
    gap = jnp.abs(data.qpos[0] - info["target"])
    return PgState(data, self._obs(data, info), -gap, jnp.zeros(()), {"gap": gap}, info)

  def _obs(self, data, info):
    return jnp.concatenate([data.qpos, data.qvel, info["target"][None]])


@pytest.fixture(scope="module")
def setup():
  pg = SlideToTarget()
  config = envs.EnvConfig(num_worlds=B, image_size=32, episode_length=3, action_horizon=2)
  env = playground.PlaygroundAdapter(
      pg, "SlideToTarget", config, success_fn=lambda s: s.metrics["gap"] < 0.02)
  venv = envs.wrap_for_training(env)
  return pg, env, jax.jit(venv.reset), jax.jit(venv.step)


def test_task_words_and_config(setup):
  assert playground.task_words("CartpoleBalance") == "cartpole balance"
  assert playground.task_words("SwimmerSwimmer6") == "swimmer swimmer 6"
  pg = setup[0]
  with pytest.raises(ValueError, match="image_size"):
    playground.PlaygroundAdapter(pg, "x", envs.EnvConfig(image_size=0, episode_length=3))
  # No episode length given: Playground's default 1000 env steps, in chunks of H = 2.
  env = playground.PlaygroundAdapter(
      pg, "x", envs.EnvConfig(num_worlds=B, action_horizon=2, episode_length=None), render=False)
  assert env.config.episode_length == 500 and env.config.substeps == 1


def test_observation_mapping(setup):
  pg, env, reset, _ = setup
  keys = jax.random.split(jax.random.PRNGKey(0), B)
  state = reset(keys)
  assert env.observation_size == {"image": (1, 32, 32, 3), "instruction": (), "proprio": (3,)}
  assert env.action_size == 2 and env.config.cameras == ("above",)
  assert state.obs["image"].shape == (B, 1, 32, 32, 3) and state.obs["image"].dtype == jnp.uint8
  assert env.instruction_table() == ["slide to target"]
  assert np.all(np.asarray(state.obs["instruction"]) == 0)
  # proprio is the Playground obs of the same reset.
  direct = jax.vmap(pg.reset)(keys)
  np.testing.assert_allclose(np.asarray(state.obs["proprio"]), np.asarray(direct.obs))
  assert len(np.unique(np.asarray(state.obs["image"][0]).reshape(-1, 3), axis=0)) > 1


def test_chunk_runs_h_playground_steps(setup):
  pg, env, reset, step = setup
  state = reset(jax.random.split(jax.random.PRNGKey(1), B))
  # Push each puck away from its target, so that no episode ends (on success) midway.
  away = -jnp.sign(state.info["task"]["info"]["target"])[:, None]
  chunk = away * jnp.array([[1.0, 0.5]])  # [B, H * D], H = 2, D = 1
  nxt = step(state, chunk)

  direct = PgState(state.pipeline_state, state.info["task"]["obs"], state.reward,
                   jnp.zeros(B), state.info["task"]["metrics"], state.info["task"]["info"])
  pg_step = jax.jit(jax.vmap(pg.step))
  first = pg_step(direct, chunk[:, :1])
  second = pg_step(first, chunk[:, 1:])
  np.testing.assert_allclose(np.asarray(nxt.pipeline_state.qpos),
                             np.asarray(second.data.qpos), atol=1e-6)
  np.testing.assert_allclose(np.asarray(nxt.reward), np.asarray(first.reward + second.reward),
                             atol=1e-6)
  np.testing.assert_array_equal(np.asarray(nxt.info["task"]["info"]["steps"]), [2, 2])
  # The image follows the puck: pushing it changes the pixels.
  moved = step(nxt, chunk)
  assert not np.any(np.asarray(moved.done))
  diff = np.abs(np.asarray(moved.obs["image"], np.int32) - np.asarray(state.obs["image"]))
  assert (diff.sum(-1) > 30).mean() > 0.005


def test_episode_limit_and_auto_reset(setup):
  _, env, reset, step = setup
  state = reset(jax.random.split(jax.random.PRNGKey(2), B))
  zero = jnp.zeros((B, env.action_size))
  for _ in range(env.config.episode_length):
    state = step(state, zero)
  # Truncated after episode_length policy steps, and the Playground info restarted with it.
  np.testing.assert_array_equal(np.asarray(state.info["truncation"]), [1, 1])
  np.testing.assert_array_equal(np.asarray(state.info["task"]["info"]["steps"]), [0, 0])


def test_success_fn_ends_the_episode(setup):
  _, env, reset, step = setup
  state = reset(jax.random.split(jax.random.PRNGKey(3), B))
  # Put both pucks on their targets: the next step is a success.
  target = state.info["task"]["info"]["target"]
  data = state.pipeline_state.replace(qpos=target[:, None])
  state = state.replace(pipeline_state=data)
  nxt = step(state, jnp.zeros((B, env.action_size)))
  np.testing.assert_array_equal(np.asarray(nxt.metrics["success"]), [1, 1])
  assert np.all(np.asarray(nxt.reward) > -0.05)


def test_real_playground_cartpole():
  """CartpoleBalance from the `playground` package, when it is installed."""
  pytest.importorskip("mujoco_playground")
  config = envs.EnvConfig(num_worlds=B, image_size=32, episode_length=4, action_horizon=2)
  env = playground.make("CartpoleBalance", config)
  venv = envs.wrap_for_training(env)
  state = jax.jit(venv.reset)(jax.random.split(jax.random.PRNGKey(0), B))
  assert env.observation_size["proprio"] == (5,) and env.action_size == 2
  state = jax.jit(venv.step)(state, jnp.zeros((B, env.action_size)))
  # Balanced and centred: the dense reward is close to 1 per Playground step.
  assert np.all(np.asarray(state.reward) > 1.5)
  assert env.instruction_table()[int(state.obs["instruction"][0])] == "cartpole balance"
  # Drawn by our batch renderer from the cartpole's first camera: not a blank image.
  assert len(np.unique(np.asarray(state.obs["image"][0]).reshape(-1, 3), axis=0)) > 4
  with pytest.raises(ValueError, match="CartpoleBalance"):
    playground.make("CartpoleBalanc", config)
