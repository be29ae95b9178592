"""The LIBERO-style suite: registry, instructions, layouts, experts and what the camera draws.

One compiled env runs every suite task at once (the task is data), so the expert test costs one
compile; the rendering tests share a second, small env.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dvla_jax import envs
from dvla_jax.envs import expert_rates
from dvla_jax.envs import scene
from dvla_jax.envs import tasks

PER_TASK = 8
NAMES = [t.name for t in tasks.TASKS]


@pytest.fixture(scope="module")
def expert_run():
  """Every suite task, PER_TASK worlds each, reset and run by its expert to success."""
  config = envs.SuiteEnv.default_config(task_names=NAMES, num_worlds=PER_TASK * len(NAMES),
                                        render=False)
  env = envs.SuiteEnv(config, NAMES)
  ids = np.arange(config.num_worlds) % len(NAMES)
  reset = jax.jit(lambda rng: jax.vmap(env.reset_task)(
      jax.random.split(rng, config.num_worlds), jnp.asarray(ids)))
  first = reset(jax.random.PRNGKey(0))
  final, success, steps = expert_rates.rollout(env, reset, jax.random.PRNGKey(0))
  return env, ids, first, final, success, steps


def _finite(tree):
  return all(np.all(np.isfinite(np.asarray(x, np.float64))) for x in jax.tree.leaves(tree)
             if np.issubdtype(np.asarray(x).dtype, np.floating))


def test_registry_has_four_suites_and_every_family():
  assert envs.list_suites() == ["spatial", "object", "goal", "long"]
  suite_names = [n for s in envs.list_suites() for n in envs.suite_tasks(s)]
  assert len(suite_names) >= 16 and all(len(envs.suite_tasks(s)) >= 4 for s in envs.list_suites())
  assert set(suite_names) | {"touch_cube"} == set(envs.list_tasks())
  families = {st.family for t in tasks.TASKS for st in t.stages}
  assert families == {tasks.REACH, tasks.PUSH, tasks.LIFT, tasks.PLACE, tasks.STACK}
  assert all(len(t.stages) == 2 for t in tasks.TASKS if t.suite == "long")
  with pytest.raises(ValueError, match="allowed: spatial, object, goal, long"):
    envs.suite_tasks("libero_90")
  with pytest.raises(envs.UnknownTaskError, match="goal_stack_cubes"):
    envs.check_task("goal_stack_cube")


def test_default_configs_follow_the_task():
  assert envs.default_config("long_place_two").episode_length == 64
  assert envs.default_config("long_place_two", action_horizon=4).episode_length == 32
  assert envs.default_config("goal_touch_ball").timestep == 0.01
  touch = envs.default_config("touch_cube")  # The demo's settings, unchanged.
  assert (touch.episode_length, touch.timestep, touch.substeps, touch.max_delta) == (
      16, 0.02, 2, 0.05)


@pytest.mark.parametrize("change, field", [
    ({"image_size": 0}, "image_size"), ({"episode_length": -3}, "episode_length"),
    ({"num_worlds": 0}, "num_worlds"), ({"cameras": ("nope",)}, "cameras"),
    ({"timestep": 0.0}, "timestep"), ({"depth": True, "impl": "jax"}, "depth"),
])
def test_impossible_settings_fail_in_one_line(change, field):
  with pytest.raises(ValueError, match=f"EnvConfig.{field}") as e:
    envs.make("goal_place_cube", envs.EnvConfig(**{"render": False, **change}))
  assert "\n" not in str(e.value)


def test_instructions_name_the_task():
  """Several phrasings per task; within a suite no instruction could belong to two tasks.

  (Across suites one sentence may recur with the same meaning: the object suite's shuffled
  colours can produce the goal suite's "put the blue cube on the orange pad".)
  """
  tables = {t.name: set(tasks.instructions(t)) for t in tasks.TASKS}
  for spec in tasks.TASKS:
    assert len(spec.phrases) >= 2 and len(tables[spec.name]) >= 2
    for other in tasks.TASKS:
      if other.name != spec.name:
        assert tables[spec.name] != tables[other.name]
        assert other.suite != spec.suite or not tables[spec.name] & tables[other.name]


def test_reset_layout_colours_and_text(expert_run):
  env, ids, first, _, _, _ = expert_run
  info = jax.tree.map(np.asarray, first.info["task"])
  texts = [env.instruction_table()[i] for i in np.asarray(first.obs["instruction"])]
  pos = np.asarray(jax.vmap(env.object_pos)(first.pipeline_state))
  for w, name in enumerate(np.asarray(NAMES)[ids]):
    spec = tasks.BY_NAME[name]
    assert texts[w] in tasks.instructions(spec)
    obj, colour = info["obj"][w, 0], info["colour"][w]
    if spec.colours == "shuffle":  # The text names the target's and the pad's drawn colours.
      assert f"{tasks.PALETTE[colour[obj]]} {tasks.SHAPE_WORDS[obj]}" in texts[w]
      assert f"{tasks.PALETTE[colour[len(env.objects) + 1]]} pad" in texts[w]
      assert len(set(colour)) == len(colour)
    if spec.suite == "spatial":  # The named cube is the one the relation picks.
      other = 1 - obj
      key = {"spatial_left_cube": pos[w, obj, 0] < pos[w, other, 0],
             "spatial_right_cube": pos[w, obj, 0] > pos[w, other, 0],
             "spatial_front_cube": pos[w, obj, 1] < pos[w, other, 1],
             "spatial_back_cube": pos[w, obj, 1] > pos[w, other, 1]}.get(name)
      if key is None:
        ball = pos[w, tasks.object_index("ball")]
        key = np.linalg.norm(pos[w, obj] - ball) < np.linalg.norm(pos[w, other] - ball)
      assert key, (name, w)
    if spec.layout == "fixed":
      assert np.abs(pos[w, :, :2] - np.asarray(tasks.FIXED_XY)[:5]).max() <= 0.0151
  random_layout = ids == NAMES.index("long_place_two")
  assert np.std(pos[random_layout, 0, 0]) > 0.02
  shuffled = ids == NAMES.index("object_place_ball")
  assert len({tuple(c) for c in info["colour"][shuffled]}) > 1
  assert len(set(texts)) > len(NAMES)


def test_every_task_resets_unsolved_and_steps_finite(expert_run):
  env, _, first, final, _, _ = expert_run
  at_reset, _, _ = jax.vmap(env.evaluate)(first)
  assert not np.any(np.asarray(at_reset))
  assert _finite(first.obs) and _finite(first.pipeline_state.qpos)
  assert _finite(final.obs) and _finite(final.pipeline_state.qpos) and _finite(final.reward)


def test_experts_succeed_on_every_task(expert_run):
  env, ids, _, final, success, steps = expert_run
  per_task = {n: int(success[ids == i].sum()) for i, n in enumerate(NAMES)}
  assert all(v >= PER_TASK - 1 for v in per_task.values()), per_task
  # The frozen final state is where the episode ended: the env reported success there, and
  # the predicate holds in it (success may also come mid-chunk, e.g. while a pushed object is
  # still rocking, so allow a few exceptions).
  assert np.all(np.asarray(final.metrics["success"])[success] == 1.0)
  done_now, _, _ = jax.vmap(env.evaluate)(final)
  assert np.mean(np.asarray(done_now)[success]) >= 0.95
  assert np.all(steps[success] <= env.config.episode_length)
  # PolicyLanes finish in order: a long task's first stage holds at its end too.
  long_worlds = np.isin(ids, [NAMES.index(n) for n in envs.suite_tasks("long")]) & success
  assert np.all(np.asarray(final.metrics["stages_done"])[long_worlds] == 2)


def test_default_reward_is_sparse_success(expert_run):
  env, _, first, _, _, _ = expert_run
  assert env.config.reward_shaping == 0.0
  step = expert_rates._jitted_expert_step(env)  # pylint: disable=protected-access
  state, rewards, successes = first, [], []
  for _ in range(env.config.episode_length):
    state, _ = step(state, jnp.zeros(first.reward.shape, bool))
    rewards.append(np.asarray(state.reward))
    successes.append(np.asarray(state.metrics["success"]))
  rewards, successes = np.stack(rewards), np.stack(successes)
  # Sparse: the reward is the success flag, nothing else, and the expert earns some.
  np.testing.assert_array_equal(rewards, successes)
  assert rewards.max() == 1.0 and set(np.unique(rewards)) <= {0.0, 1.0}


# -- Rendering ------------------------------------------------------------------------------

_CAMS = ("front", "wrist")


@pytest.fixture(scope="module")
def render_env():
  config = envs.default_config("goal_place_cube", num_worlds=2, image_size=64, cameras=_CAMS,
                               depth=True)
  env = envs.make("goal_place_cube", config)
  reset = jax.jit(lambda rng: jax.vmap(env.reset)(jax.random.split(rng, 2)))
  step = jax.jit(jax.vmap(env.step))
  return env, reset, step


def _project(env, data, world, point, size):
  """Pixel (row, col) of a world point in the front camera (pinhole, MuJoCo conventions)."""
  cam = env.mj_model.camera("front").id
  pos = np.asarray(data.cam_xpos[world, cam])
  mat = np.asarray(data.cam_xmat[world, cam]).reshape(3, 3)
  local = mat.T @ (np.asarray(point) - pos)  # Camera looks down its -z axis.
  f = 0.5 * size / np.tan(np.deg2rad(env.mj_model.cam_fovy[cam]) / 2)
  return int(round(size / 2 - f * local[1] / -local[2])), int(round(
      size / 2 + f * local[0] / -local[2]))


def _looks_like(pixel, rgb):
  """Same hue up to shading: compare chromaticity."""
  pixel = np.asarray(pixel, np.float64) + 1.0
  rgb = np.asarray(rgb, np.float64) + 0.01
  return np.abs(pixel / pixel.sum() - rgb / rgb.sum()).max() < 0.12


def test_camera_draws_the_physics(render_env):
  """Each object shows its drawn colour where it is; a moved object shows where it went."""
  env, reset, step = render_env
  state = reset(jax.random.PRNGKey(1))
  assert state.obs["image"].shape == (2, 2, 64, 64, 3)
  colour = np.asarray(state.info["task"]["colour"])
  palette = [scene.COLOURS[c] for c in tasks.PALETTE]
  cube = tasks.object_index("cube_b")
  data = state.pipeline_state
  old = np.asarray(jax.vmap(env.object_pos)(data))[1, cube]
  # Park the gripper outside the front camera's view, and move world 1's blue cube to a free
  # spot; one step (holding still, fingers open) settles the scene and renders it.
  m = env.mj_model
  adr = m.jnt_qposadr[m.joint("cube_b_free").id]
  new_xy = np.array([0.0, -0.2])
  park = jnp.array([0.25, -0.25, 0.25])
  qpos = data.qpos.at[:, :3].set(park).at[1, adr:adr + 2].set(jnp.asarray(new_xy))
  ctrl = data.ctrl.at[:, :3].set(park)
  moved = step(state.replace(pipeline_state=data.replace(qpos=qpos, ctrl=ctrl)),
               jnp.zeros((2, env.action_size)).at[:, 3::4].set(-1.0))
  image = np.asarray(moved.obs["image"][:, 0])
  pos = np.asarray(jax.vmap(env.object_pos)(moved.pipeline_state))
  assert np.linalg.norm(pos[1, cube, :2] - new_xy) < 0.01
  for w in range(2):
    for i, o in enumerate(pos[w]):
      r, c = _project(env, moved.pipeline_state, w, o, 64)
      assert _looks_like(image[w, r, c], palette[colour[w, i]]), (w, i, image[w, r, c])
  r, c = _project(env, moved.pipeline_state, 1, old, 64)
  assert not _looks_like(image[1, r, c], palette[colour[1, cube]])
  # The wrist camera moved with the gripper: it now looks at a different part of the table.
  assert np.abs(np.asarray(moved.obs["image"][0, 1], int) -
                np.asarray(state.obs["image"][0, 1], int)).sum(-1).mean() > 10


def test_depth_and_wrist_camera(render_env):
  env, reset, _ = render_env
  obs = reset(jax.random.PRNGKey(2)).obs
  depth = np.asarray(obs["depth"][0, 0, :, :, 0])
  assert depth.min() >= 0.0 and depth.max() <= 1.0  # 0 where a ray hits nothing.
  # The table's near edge (bottom rows) is closer to the front camera than its middle.
  near, middle = depth[-4:, :8], depth[28:36, :8]
  assert near.min() > 0.0 and near.mean() < middle.mean()
  wrist = np.asarray(obs["image"][0, 1])
  assert len(np.unique(wrist.reshape(-1, 3), axis=0)) > 4
  assert env.observation_size["depth"] == (2, 64, 64, 1)
