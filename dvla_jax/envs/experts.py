"""Scripted experts for the suite tasks.

An expert reads privileged state (object, pad and gripper positions) and returns an action
chunk for one world, so it vmaps like the env. It keeps no memory: the phase (approach,
grasp, carry, release, push) is read off the state each policy step, which also makes it
recover from slips and missed grasps. `expert_rates` runs the experts and reports how often
they succeed.
"""


import jax
import jax.numpy as jnp

from dvla_jax.envs import mjx_env
from dvla_jax.envs import scene
from dvla_jax.envs import tasks

HOVER = 0.1  # TCP height for empty moves: the fingertips clear a stack of two cubes.
CARRY = 0.12  # Centre height of a carried object: its bottom clears a stack of two cubes.
PUSH_HOVER = 0.08  # TCP height for moving to a push: shut fingers clear the 6 cm block.
_OPEN, _SHUT = -1.0, 1.0
_ALIGNED = 0.008  # TCP-to-object horizontal error at which the fingers close.
_NEAR = 0.02  # Horizontal error within which the gripper descends (open fingers clear 2.9 cm).
_CARRY_SPEED = 1.0  # Fraction of max_delta while holding something.
_PUSH_LEAD = 0.045  # How far the pushing fingers aim past the contact point (less near the pad).


def suite_expert(env, state: mjx_env.State) -> jax.Array:
  """The expert action chunk [H * 4] of a `suite.SuiteEnv` world.

  Works on the first stage whose goal does not hold yet (so a two-stage task returns to stage
  one if stage two undid it).

  Args:
    env: the SuiteEnv.
    state: one world's state.

  Returns:
    The action chunk, flattened.
  """
  data = state.pipeline_state
  info = state.info["task"]
  first_done, _, first_goal = env.stage_status(data, info, 0)
  # A push counts as done for the expert only near the pad centre: an object left at the
  # pad's rim can sit where the fingers come down for the next object.
  first_done &= (info["family"][0] != tasks.PUSH) | (first_goal < 0.015)
  stage = jnp.where(first_done & (info["family"][1] >= 0), 1, 0)
  fam, obj, dest = info["family"][stage], info["obj"][stage], info["dest"][stage]
  pos = env.object_pos(data)
  heights = jnp.asarray(env.heights)
  o, h = pos[obj], heights[obj]
  tcp = env.tcp_pos(data)
  finger = env.finger_pos(data)
  closure = scene.finger_closure(jnp.asarray(env.half_widths)[obj])
  # Closed on it: told to shut, short of shut, and either stalled against the object or
  # already carrying it (shaking while carried makes the fingers' speed useless then).
  stalled = jnp.abs(env.finger_vel(data)) < 0.02
  lifted = o[2] > h + 0.01
  gripped = (env.holding(data, obj) & (data.ctrl[3] > 0.9 * scene.FINGER_TRAVEL)
             & (finger < scene.FINGER_TRAVEL - 0.006) & (stalled | lifted))

  pad = data.mocap_pos[jnp.clip(dest, 0, tasks.NUM_PADS - 1)]
  base_i = jnp.clip(dest, 0, len(env.objects) - 1)
  base = pos[base_i]
  place_goal = jnp.concatenate([pad[:2], h[None] + 0.003])
  stack_goal = base + jnp.array([0.0, 0.0, 1.0]) * (heights[base_i] + h + 0.004)
  lift_goal = jnp.concatenate([o[:2], jnp.array([CARRY])])

  grasp = _grasp(tcp, o, finger, closure)
  plans = [
      _reach(tcp, o, h),
      _push(tcp, o, pad, finger),
      _pick(tcp, o, lift_goal, gripped, finger, grasp, release=False),
      _pick(tcp, o, place_goal, gripped, finger, grasp, release=True),
      _pick(tcp, o, stack_goal, gripped, finger, grasp, release=True),
  ]
  which = jnp.clip(fam, 0, len(plans) - 1)
  target = jnp.stack([p[0] for p in plans])[which]
  grip = jnp.stack([p[1] for p in plans])[which]
  speed = jnp.where(gripped, _CARRY_SPEED, 1.0)
  return _chunk(data.ctrl[:3], target, grip, speed, env.config.max_delta,
                env.config.action_horizon)


def _chunk(ctrl, target, grip, speed, max_delta, horizon):
  """Actions that move the actuator target to `target` as fast as `speed` allows."""
  actions = []
  for _ in range(horizon):
    a = jnp.clip((target - ctrl) / max_delta, -speed, speed)
    ctrl = ctrl + a * max_delta
    actions.append(jnp.concatenate([a, grip[None]]))
  return jnp.concatenate(actions)


def _above(tcp, xy, z_travel, z_goal, near):
  """Goes to (xy, z_goal) by way of z_travel: rise, move across, then descend.

  Within `near` of xy it descends straight away, correcting the small horizontal error on the
  way down instead of climbing back up (no dithering between the two).
  """
  far = jnp.linalg.norm(tcp[:2] - xy) > near
  low = tcp[2] < z_travel - 0.015
  up = jnp.concatenate([tcp[:2], jnp.array([z_travel])])
  across = jnp.concatenate([xy, jnp.array([z_travel])])
  down = jnp.concatenate([xy, z_goal[None]])
  return jnp.where(far & low, up, jnp.where(far, across, down))


def _reach(tcp, o, h):
  """Open fingers straddle the object with the TCP at its top face."""
  return _above(tcp, o[:2], HOVER, o[2] + h, _NEAR), jnp.asarray(_OPEN)


def _grasp(tcp, o, finger, closure):
  """Approach with open fingers, descend around the object, close."""
  aligned = jnp.linalg.norm(tcp[:2] - o[:2]) < _ALIGNED
  low = tcp[2] < o[2] + 0.012
  near = jnp.linalg.norm(tcp[:2] - o[:2]) < _NEAR
  missed = near & (finger > closure + 0.008)  # Shut past the object here: it slipped out.
  close = aligned & low & ~missed
  target = _above(tcp, o[:2], HOVER, o[2], _NEAR)
  target = jnp.where(missed, jnp.concatenate([o[:2], jnp.array([HOVER])]), target)
  # Climbing away from something else (e.g. an object just pushed), fingers keep still:
  # opening them low down would swat whatever they touch.
  climbing = ~near & (tcp[2] < HOVER - 0.015)
  keep = jnp.where(finger > 0.5 * scene.FINGER_TRAVEL, _SHUT, _OPEN)
  return target, jnp.where(close, _SHUT, jnp.where(climbing, keep, _OPEN))


def _pick(tcp, o, goal, gripped, finger, grasp, release):
  """Grasp, carry the object's centre to `goal`, and (if `release`) let go and back off."""
  offset = tcp - o  # Where the object sits in the hand; carried along unchanged.
  at_goal = (jnp.linalg.norm(o[:2] - goal[:2]) < 0.012) & (jnp.abs(o[2] - goal[2]) < 0.01)
  carry = _above(o, goal[:2], CARRY, goal[2], 0.015) + offset
  if not release:
    at_goal = jnp.zeros((), bool)
  open_up = jnp.concatenate([tcp[:2], jnp.array([HOVER])])
  settle = jnp.where(finger > 0.012, tcp, open_up)
  target = jnp.where(at_goal, settle, jnp.where(gripped, carry, grasp[0]))
  grip = jnp.where(at_goal, _OPEN, jnp.where(gripped, _SHUT, grasp[1]))
  return target, grip


def _push(tcp, o, pad, finger):
  """Closed fingers behind the object, pushing it along the line to the pad centre.

  (Layouts of push tasks keep that line clear of other objects; see suite._sample_layout.)
  """
  d = pad[:2] - o[:2]
  dist = jnp.linalg.norm(d)
  u = d / jnp.maximum(dist, 1e-6)
  behind = o[:2] - u * 0.05
  rel = tcp[:2] - o[:2]
  along = rel @ u
  lateral = jnp.linalg.norm(rel - along * u)
  push_z = o[2]
  low = tcp[2] < push_z + 0.015
  in_line = (along < -0.025) & (lateral < 0.012) & low
  # Behind the object but off its line: slide across at push height instead of climbing out.
  realign = (along < -0.025) & (lateral < 0.04) & low
  # Aim the fingers a little into the object (3.4 cm behind its centre is contact), so it
  # moves about _PUSH_LEAD per policy step and slows down as it nears the pad centre.
  shove = jnp.concatenate([o[:2] + u * (jnp.minimum(dist, _PUSH_LEAD) - 0.034), push_z[None]])
  # Descend only once the fingers are shut: open, they reach 6 cm sideways and can land on
  # the object, which closing fingers then grasp instead of pushing.
  shut = finger > scene.FINGER_TRAVEL - 0.008
  approach = _above(tcp, behind, PUSH_HOVER, jnp.where(shut, push_z, PUSH_HOVER), 0.012)
  approach = jnp.where(realign, jnp.concatenate([behind, push_z[None]]), approach)
  return jnp.where(in_line, shove, approach), jnp.asarray(_SHUT)
