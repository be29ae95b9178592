"""Touch the named cube: the first task. Three cubes, the instruction names one by colour.

The layout is random every episode, so the policy must find the named colour in the image:
ignoring the instruction caps the success rate near one in three.
"""

import jax
import jax.numpy as jnp

from dvla_jax.envs import mjx_env
from dvla_jax.envs import scene

_PHRASES = (
    "touch the {} cube",
    "tap the {} block",
    "reach the {} cube",
)
TOUCH_DISTANCE = 0.06  # Palm centre to cube centre; touching from above is 0.042.


class TouchCube(mjx_env.TabletopEnv):
  """Move the gripper onto the cube whose colour the instruction names."""

  objects = (
      scene.ObjectSpec("red_cube", "red"),
      scene.ObjectSpec("green_cube", "green"),
      scene.ObjectSpec("blue_cube", "blue"),
  )

  def instruction_table(self) -> list[str]:
    return [p.format(o.colour) for o in self.objects for p in _PHRASES]

  def _sample_episode(self, rng):
    pos_rng, target_rng, phrase_rng = jax.random.split(rng, 3)
    n = len(self.objects)
    xy = mjx_env.sample_separated_xy(pos_rng, n, half_extent=0.18, min_sep=0.1)
    z = jnp.array([o.half_size for o in self.objects])
    quat = jnp.tile(jnp.array([1.0, 0.0, 0.0, 0.0]), (n, 1))
    qpos = jnp.concatenate([xy, z[:, None], quat], axis=-1)
    target = jax.random.randint(target_rng, (), 0, n)
    phrase = jax.random.randint(phrase_rng, (), 0, len(_PHRASES))
    info = {"target": target, "instruction": target * len(_PHRASES) + phrase}
    return qpos, info

  def expert_action(self, state):
    """Heads straight for a point just above the named cube's centre."""
    data = state.pipeline_state
    goal = self.object_pos(data)[state.info["task"]["target"]] + jnp.array([0.0, 0.0, 0.035])
    step = jnp.clip((goal - data.ctrl) / self.config.max_delta, -1.0, 1.0)
    return jnp.tile(step, self.config.action_horizon)

  def _evaluate(self, data, info):
    tcp = data.xpos[self._gripper_body]
    target_pos = self.object_pos(data)[info["target"]]
    dist = jnp.linalg.norm(tcp - target_pos)
    return dist < TOUCH_DISTANCE, dist, {}
