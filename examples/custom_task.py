"""A task of your own, registered from outside the package: "hover over the <colour> ball".

Two balls, yellow and purple, lie at random places on the table; the instruction names one.
The episode succeeds when the gripper's centre hovers 6-14 cm above the named ball's centre
and within 3 cm of it horizontally. The scripted expert heads for a point 10 cm above it.

Train on it (the `tiny` smoke settings; any config works):

    python -m dvla_jax.main --config=configs/demo.py:tiny --workdir=/tmp/hover \
        --config.env.import_tasks=examples/custom_task.py --config.env.task=hover_over_ball

List it, record its expert, evaluate a run of it:

    python -m dvla_jax.envs --import_tasks=examples/custom_task.py --list
    python -m dvla_jax.envs --import_tasks=examples/custom_task.py --task hover_over_ball \
        --video hover.gif
    python -m dvla_jax.evaluate --workdir=/tmp/hover

(`dvla_jax.evaluate` imports the run's `env.import_tasks` itself.)
"""

import jax
import jax.numpy as jnp

from dvla_jax import envs
from dvla_jax.envs import mjx_env

OBJECTS = (
    envs.ObjectSpec("yellow_ball", "yellow", shape="sphere", half_size=0.025),
    envs.ObjectSpec("purple_ball", "purple", shape="sphere", half_size=0.025),
)
COLOURS = tuple(o.colour for o in OBJECTS)
PHRASES = ("hover over the {} ball", "hold the gripper above the {} ball")
INSTRUCTIONS = tuple(p.format(c) for c in COLOURS for p in PHRASES)
HOVER_LOW, HOVER_HIGH, HOVER_RADIUS = 0.06, 0.14, 0.03  # Metres above / beside the centre.
HOVER_HEIGHT = 0.10


def sample_episode(rng: jax.Array):
  """Random, separated ball positions; a random target ball and phrase."""
  pos_rng, target_rng, phrase_rng = jax.random.split(rng, 3)
  n = len(OBJECTS)
  xy = mjx_env.sample_separated_xy(pos_rng, n, half_extent=0.18, min_sep=0.1)
  z = jnp.array([o.half_size for o in OBJECTS])
  quat = jnp.tile(jnp.array([1.0, 0.0, 0.0, 0.0]), (n, 1))
  qpos = jnp.concatenate([xy, z[:, None], quat], axis=-1)
  target = jax.random.randint(target_rng, (), 0, n)
  phrase = jax.random.randint(phrase_rng, (), 0, len(PHRASES))
  return qpos, {"target": target, "instruction": target * len(PHRASES) + phrase}


def _goal(env, data, info):
  return env.object_pos(data)[info["target"]] + jnp.array([0.0, 0.0, HOVER_HEIGHT])


def success(env, data, info):
  """Hovering above the named ball; the distance is to the hover point."""
  ball = env.object_pos(data)[info["target"]]
  offset = env.tcp_pos(data) - ball
  horizontal = jnp.linalg.norm(offset[:2])
  above = (offset[2] > HOVER_LOW) & (offset[2] < HOVER_HIGH)
  distance = jnp.linalg.norm(env.tcp_pos(data) - _goal(env, data, info))
  return above & (horizontal < HOVER_RADIUS), distance


def expert(env, state):
  """Straight to the hover point, as fast as the action limit allows."""
  data = state.pipeline_state
  goal = _goal(env, data, state.info["task"])
  step = jnp.clip((goal - data.ctrl) / env.config.max_delta, -1.0, 1.0)
  return jnp.tile(step, env.config.action_horizon)


envs.register_task(envs.TaskDefinition(
    name="hover_over_ball",
    objects=OBJECTS,
    instructions=INSTRUCTIONS,
    sample_episode=sample_episode,
    success=success,
    expert=expert,
    episode_length=8,
    suite="examples",
    description="hover the palm gripper above the yellow/purple ball named in the instruction "
                "(examples/custom_task.py)"))
