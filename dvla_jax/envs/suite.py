"""The two-finger tabletop env that runs every task of the LIBERO-style suite (`tasks.TASKS`).

One `SuiteEnv` holds one or more tasks. Which task a world runs is data (`info["task"]`), so a
single compiled reset/step serves a whole suite: `reset` draws a task per world, `reset_task`
picks it. Layout, colours and instruction are drawn per episode; the success predicate is the
conjunction of the task's stages (see `tasks.Stage`).

Success per stage family (all of a task's stages must hold at once):
  reach  the TCP is within REACH_TOLERANCE of the object's top face;
  push   the object rests with its centre within PAD_TOLERANCE of the pad's centre;
  lift   the object's centre is above LIFT_HEIGHT;
  place  as push, and the fingers have let go of it;
  stack  it rests on the base object (centres within STACK_TOLERANCE), the base rests on the
         table, and the fingers have let go.
Reward: 1 on success (which ends the episode), else 0; with `reward_shaping` k > 0, plus the
potential-based term gamma * phi(s') - phi(s), phi = -k * `metrics["distance"]` (object to goal
plus half of gripper to object; a later stage counts from a fixed budget until the earlier one
holds), phi = 0 after success (see `mjx_env.EnvConfig`). `metrics["goal_distance"]` is the
object-to-goal part, `metrics["stages_done"]` counts satisfied stages.

Action per control step (D = 4): target deltas dx, dy, dz in [-1, 1] * max_delta, and an
absolute grip command (-1 open .. +1 shut). Proprioception: TCP position, actuator targets
(x, y, z, finger), and the finger gap.
"""

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from mujoco import mjx
import numpy as np

from dvla_jax.envs import experts
from dvla_jax.envs import mjx_env
from dvla_jax.envs import scene
from dvla_jax.envs import tasks

LIFT_HEIGHT = 0.1  # Object centre height that counts as lifted.
PAD_TOLERANCE = scene.PAD_RADIUS - 0.01  # Object centre to pad centre for "on the pad".
STACK_TOLERANCE = 0.02  # Horizontal offset allowed between stacked objects.
REACH_TOLERANCE = 0.03  # TCP to the top of the object for "touch".
_RESTING = 0.01  # Height above its resting height at which an object still rests.
_GRIP_SLACK = 0.004  # Finger travel short of the widest contact at which the grip has let go.
_MAX_STAGES = 2
# Random layouts: distinct cells of a _GRID x _GRID grid over +-_LAYOUT_HALF, jittered so that
# centres stay _MIN_SEPARATION apart (open fingers reach 6.1 cm sideways, objects 2 cm).
_GRID = 4
_LAYOUT_HALF = 0.22
_MIN_SEPARATION = 0.09
_FIXED_JITTER = 0.015
_LAYOUT_TRIES = 16
_PUSH_LANE = 0.075  # Other objects' centres stay this far from a push lane.
_RELATION_MARGIN = 0.06
_MAX_YAW = 0.3  # Boxes start turned by up to this many radians.


class SuiteEnv(mjx_env.TabletopEnv):
  """Cartesian two-finger gripper, five objects and two pads; runs any task of `tasks.TASKS`."""

  objects = tasks.SCENE_OBJECTS
  action_dim = 4
  proprio_dim = 8
  # Measured (see scene.py): 10 ms steps keep a grasped object in hand at full speed.
  defaults = {"episode_length": 40, "substeps": 4, "timestep": 0.01, "max_delta": 0.04}
  contacts_per_world = 48
  constraints_per_world = 256
  workspace = (scene.FINGER_LOW[:3], scene.FINGER_HIGH[:3])

  def __init__(self, config: mjx_env.EnvConfig, task_names: Sequence[str]):
    if not task_names:
      raise ValueError("SuiteEnv needs at least one task")
    self.specs = tuple(tasks.BY_NAME[n] for n in task_names)
    config = self.default_config(config, task_names=task_names)
    self._tables = _task_tables(self.specs)
    self.heights = np.array([o.height for o in self.objects], np.float32)
    self.half_widths = np.array([o.half_size for o in self.objects], np.float32)
    self._widest = np.array([o.half_size * (math.sqrt(2.0) if o.shape == "box" else 1.0)
                             for o in self.objects], np.float32)
    super().__init__(config)
    m = self.mj_model
    self._finger_adr = int(m.jnt_qposadr[m.joint("fl").id])
    self._finger_dof = int(m.jnt_dofadr[m.joint("fl").id])
    self._colour_geoms = np.array([m.geom(f"{o.name}_geom").id for o in self.objects] +
                                  [m.geom(f"pad{i}_geom").id for i in range(tasks.NUM_PADS)])
    self._palette = np.array([(*scene.COLOURS[c], 1.0) for c in tasks.PALETTE], np.float32)

  @classmethod
  def default_config(cls, config: mjx_env.EnvConfig | None = None,
                     task_names: Sequence[str] = (), **changes) -> mjx_env.EnvConfig:
    """Like `TabletopEnv.default_config`; the episode limit defaults to the longest task's."""
    config = (config or mjx_env.EnvConfig()).replace(**changes)
    if config.episode_length is None and task_names:
      # Task limits are counted at action_horizon 2: keep the same simulated time.
      steps = max(tasks.BY_NAME[n].episode_length for n in task_names)
      config = config.replace(episode_length=max(math.ceil(steps * 2 / config.action_horizon), 1))
    return super().default_config(config)

  @property
  def task_names(self) -> list[str]:
    return [s.name for s in self.specs]

  def _scene_xml(self, config):
    return scene.suite_xml(list(self.objects), tasks.NUM_PADS, config.image_size,
                           config.timestep)

  def instruction_table(self) -> list[str]:
    return [text for spec in self.specs for text in tasks.instructions(spec)]

  def instruction_tasks(self) -> np.ndarray:
    """int32 [len(instruction_table())]: the task number (into `task_names`) of each row."""
    counts = [len(tasks.instructions(spec)) for spec in self.specs]
    return np.repeat(np.arange(len(self.specs), dtype=np.int32), counts)

  # -- Episodes -----------------------------------------------------------------------------

  def reset_task(self, rng: jax.Array, task: jax.Array) -> mjx_env.State:
    """Like `reset`, but runs task number `task` (an index into `task_names`)."""
    layout_rng, info_rng = jax.random.split(rng)
    return self._start(*self._sample_task(layout_rng, task), info_rng)

  def _sample_episode(self, rng):
    task_rng, rng = jax.random.split(rng)
    return self._sample_task(rng, jax.random.randint(task_rng, (), 0, len(self.specs)))

  def _sample_task(self, rng, task):
    t = {k: jnp.asarray(v)[task] for k, v in self._tables.items()}
    # One draw for everything: each random call inlines its own generator, and many small
    # calls under vmap made this function the slowest part of the compile.
    u = _Uniforms(jax.random.uniform(rng, (_Uniforms.size,)))
    xy, target = _sample_layout(u, t["layout_fixed"], t["relation"], t["push_obj"],
                                t["push_pad"])
    obj = jnp.where(t["relation"] >= 0, target, t["obj"])
    n = len(self.objects)
    boxes = jnp.asarray([o.shape == "box" for o in self.objects])
    yaw = jnp.where(boxes, (u.take("yaw") * 2.0 - 1.0) * _MAX_YAW, 0.0)
    quat = jnp.stack([jnp.cos(yaw / 2), 0 * yaw, 0 * yaw, jnp.sin(yaw / 2)], axis=-1)
    qpos = jnp.concatenate([xy[:n], jnp.asarray(self.heights)[:, None], quat], axis=-1)
    shuffled = jnp.argsort(u.take("colour"))[:tasks.NUM_ENTITIES]
    colour = jnp.where(t["shuffle"], shuffled, t["colours"])
    phrase = jnp.minimum(jnp.floor(u.take("phrase")[0] * t["num_phrases"]).astype(jnp.int32),
                         t["num_phrases"] - 1)
    info = {"task": task, "instruction": _instruction_index(t, phrase, colour),
            "family": t["family"], "obj": obj, "dest": t["dest"], "colour": colour,
            "pad_xy": xy[n:]}
    return qpos, info

  def _init_data(self, data, info):
    z = jnp.full((tasks.NUM_PADS, 1), 0.0005)
    return data.replace(mocap_pos=jnp.concatenate([info["pad_xy"], z], axis=-1))

  # -- Scoring ------------------------------------------------------------------------------

  def _evaluate(self, data: mjx.Data, info: dict[str, Any]):
    oks, dists, goals = [], [], []
    for s in range(_MAX_STAGES):
      ok, shaped, goal = self.stage_status(data, info, s)
      oks.append(ok | (info["family"][s] < 0))
      dists.append(jnp.where(info["family"][s] < 0, 0.0, shaped))
      goals.append(jnp.where(info["family"][s] < 0, 0.0, goal))
    success = oks[0] & oks[1]
    # Until the first stage holds, the second counts as a fixed budget: progress on stage one
    # is what the shaped reward sees, and finishing it trades the budget for stage two's
    # actual distance (usually smaller).
    budget = jnp.where(info["family"][1] < 0, 0.0, 0.5)
    dist = jnp.where(oks[0], dists[1], dists[0] + budget)
    goal = jnp.where(oks[0], goals[1], goals[0])
    stages = oks[0].astype(jnp.float32) + (oks[0] & oks[1] & (info["family"][1] >= 0))
    return success, dist, {"goal_distance": goal, "stages_done": stages}

  def stage_status(self, data: mjx.Data, info: dict[str, Any], stage: int):
    """Stage `stage`'s (done bool, shaped distance, goal distance) in the state `data`."""
    pos = self.object_pos(data)
    tcp = self.tcp_pos(data)
    fam, obj, dest = info["family"][stage], info["obj"][stage], info["dest"][stage]
    o, h = pos[obj], jnp.asarray(self.heights)[obj]
    pad = data.mocap_pos[jnp.clip(dest, 0, tasks.NUM_PADS - 1)]
    base_i = jnp.clip(dest, 0, len(self.objects) - 1)
    base, hb = pos[base_i], jnp.asarray(self.heights)[base_i]
    resting = o[2] < h + _RESTING
    released = ~self.holding(data, obj)
    pad_d = jnp.linalg.norm(o[:2] - pad[:2])
    top = o + jnp.array([0.0, 0.0, 1.0]) * h
    goal = jnp.stack([
        jnp.linalg.norm(tcp - top),
        pad_d,
        jnp.maximum(LIFT_HEIGHT + 0.02 - o[2], 0.0),
        jnp.linalg.norm(o - jnp.concatenate([pad[:2], h[None]])),
        jnp.linalg.norm(o - base - jnp.array([0.0, 0.0, 1.0]) * (hb + h)),
    ])[jnp.clip(fam, 0, 4)]
    stacked = ((jnp.linalg.norm(o[:2] - base[:2]) < STACK_TOLERANCE)
               & (jnp.abs(o[2] - base[2] - hb - h) < 0.012) & (base[2] < hb + _RESTING))
    ok = jnp.stack([
        jnp.linalg.norm(tcp - top) < REACH_TOLERANCE,
        (pad_d < PAD_TOLERANCE) & resting,
        o[2] > LIFT_HEIGHT,
        (pad_d < PAD_TOLERANCE) & resting & released,
        stacked & released,
    ])[jnp.clip(fam, 0, 4)]
    approach = jnp.where(fam == tasks.REACH, 0.0, 0.5 * jnp.linalg.norm(tcp - o))
    return ok, goal + approach, goal

  def holding(self, data: mjx.Data, obj: jax.Array) -> jax.Array:
    """Whether the fingers are closed on object `obj` (geometry only, no contact query).

    Closed means nearer than where they would touch the object at its widest (a box turned
    45 degrees), less a slack: fingers opened that far have let go whatever its yaw.
    """
    o = self.object_pos(data)[obj]
    tcp = self.tcp_pos(data)
    widest = scene.finger_closure(jnp.asarray(self._widest)[obj])
    between = (jnp.linalg.norm(o[:2] - tcp[:2]) < 0.03) & (jnp.abs(o[2] - tcp[2]) < 0.03)
    return between & (self.finger_pos(data) > widest - _GRIP_SLACK)

  def finger_pos(self, data: mjx.Data) -> jax.Array:
    """Finger slide position: 0 open, scene.FINGER_TRAVEL shut."""
    return data.qpos[self._finger_adr]

  def finger_vel(self, data: mjx.Data) -> jax.Array:
    return data.qvel[self._finger_dof]

  # -- Control, observation -----------------------------------------------------------------

  def _control(self, ctrl, action):
    lo, hi = (jnp.asarray(w) for w in self.workspace)
    xyz = jnp.clip(ctrl[:3] + action[:3] * self.config.max_delta, lo, hi)
    grip = (action[3] + 1.0) * 0.5 * scene.FINGER_TRAVEL
    return jnp.concatenate([xyz, grip[None]])

  def _proprio(self, data):
    gap = 2.0 * (scene.FINGER_INNER_OPEN - self.finger_pos(data))
    return jnp.concatenate([self.tcp_pos(data), data.ctrl, gap[None]])

  def _render_model(self, info):
    # The episode's colours, plus whatever shift domain randomisation gave these geoms.
    ids = self._colour_geoms
    shift = self.mjx_model.geom_rgba[ids] - jnp.asarray(self.mj_model.geom_rgba[ids])
    rgba = jnp.clip(jnp.asarray(self._palette)[info["task"]["colour"]] + shift, 0.0, 1.0)
    return self.mjx_model.replace(geom_rgba=self.mjx_model.geom_rgba.at[ids].set(rgba))

  def expert_action(self, state: mjx_env.State) -> jax.Array:
    """Scripted expert with privileged state: the action chunk [H * D] for one world."""
    return experts.suite_expert(self, state)


def _task_tables(specs: Sequence[tasks.TaskSpec]) -> dict[str, np.ndarray]:
  """Per-task integer tables, indexed by a world's task number inside jit."""
  rows = []
  offset = 0
  for spec in specs:
    family, obj, dest, relation = ([-1] * _MAX_STAGES for _ in range(4))
    for i, stage in enumerate(spec.stages):
      family[i] = stage.family
      if stage.obj in tasks.RELATIONS:
        relation[i], obj[i] = tasks.RELATIONS.index(stage.obj), 0
      else:
        obj[i] = tasks.object_index(stage.obj)
      dest[i] = (tasks.object_index(stage.dest) if stage.family == tasks.STACK else int(stage.dest))
    mentioned = [e for _, e in tasks.mentioned_entities(spec)]
    rows.append({
        "family": family, "obj": obj, "dest": dest,
        # Only a stage-1 relation is supported; the layout sampler enforces its margin.
        "relation": relation[0], "layout_fixed": spec.layout == "fixed",
        # A stage-1 push gets a layout with a clear path (later stages are on their own).
        "push_obj": obj[0] if family[0] == tasks.PUSH else -1, "push_pad": max(dest[0], 0),
        "shuffle": spec.colours == "shuffle", "colours": tasks.default_colours(spec),
        "num_phrases": len(spec.phrases), "offset": offset,
        "mentioned": mentioned + [-1] * (4 - len(mentioned)), "num_mentioned": len(mentioned),
    })
    offset += len(tasks.instructions(spec))
  return {k: np.array([r[k] for r in rows]) for k in rows[0]}


def _instruction_index(t: dict[str, jax.Array], phrase: jax.Array, colour: jax.Array):
  """The row of `tasks.instructions(spec)` for this phrase and these colours (see there)."""
  radix = jnp.where(t["shuffle"], len(tasks.PALETTE), 1)
  acc = jnp.zeros((), jnp.int32)
  for i in range(4):
    digit = jnp.where(t["shuffle"], colour[jnp.maximum(t["mentioned"][i], 0)], 0)
    acc = jnp.where(i < t["num_mentioned"], acc * radix + digit, acc)
  return t["offset"] + phrase * radix ** t["num_mentioned"] + acc


class _Uniforms:
  """Named slices of one uniform [0, 1) draw."""

  shapes = {"cells": (_LAYOUT_TRIES, _GRID * _GRID),
            "jitter": (_LAYOUT_TRIES, tasks.NUM_ENTITIES, 2), "fixed": (tasks.NUM_ENTITIES, 2),
            "yaw": (len(tasks.SCENE_OBJECTS),), "colour": (len(tasks.PALETTE),), "phrase": (1,)}
  size = sum(math.prod(v) for v in shapes.values())

  def __init__(self, u: jax.Array):
    self._parts, start = {}, 0
    for name, shape in self.shapes.items():
      self._parts[name] = u[start:start + math.prod(shape)].reshape(shape)
      start += math.prod(shape)

  def take(self, name: str) -> jax.Array:
    return self._parts[name]


def _sample_layout(u: _Uniforms, fixed, relation, push_obj, push_pad):
  """Entity xy [objects + pads, 2] and, for a relation task, the cube it names.

  Random layouts put the entities in distinct cells of a jittered grid (so no two are closer
  than _MIN_SEPARATION). A few candidates are drawn and the first that suits the task is kept:
  a relation must be clear-cut (the two cubes differ by at least _RELATION_MARGIN in the
  relation's key), and a pushed object needs a free lane to its pad.
  """
  n = tasks.NUM_ENTITIES
  cell = 2 * _LAYOUT_HALF / _GRID
  idx = jnp.argsort(u.take("cells"), axis=-1)[:, :n]  # [tries, n] distinct cells
  ij = jnp.stack([idx // _GRID, idx % _GRID], axis=-1).astype(jnp.float32)
  slack = cell - _MIN_SEPARATION
  cands = -_LAYOUT_HALF + (ij + 0.5) * cell + (u.take("jitter") - 0.5) * slack
  fixed_xy = jnp.asarray(tasks.FIXED_XY) + (u.take("fixed") - 0.5) * 2 * _FIXED_JITTER
  cands = jnp.where(fixed, fixed_xy[None], cands)
  ball = tasks.object_index("ball")
  keys = jnp.stack([cands[:, :2, 0], -cands[:, :2, 0], cands[:, :2, 1], -cands[:, :2, 1],
                    jnp.linalg.norm(cands[:, :2] - cands[:, ball:ball + 1], axis=-1)])
  key = keys[jnp.maximum(relation, 0)]  # [tries, 2 cubes]
  ok = (relation < 0) | (jnp.abs(key[:, 0] - key[:, 1]) > _RELATION_MARGIN)
  ok &= (push_obj < 0) | jax.vmap(_push_lane_clear, in_axes=(0, None, None))(
      cands, jnp.maximum(push_obj, 0), push_pad)
  pick = jnp.argmax(ok)
  return cands[pick], jnp.argmin(key[pick]).astype(jnp.int32)


def _push_lane_clear(xy, obj, pad):
  """Whether the lane from behind object `obj` to pad `pad` is free of the other objects."""
  num_obj = len(tasks.SCENE_OBJECTS)
  start, end = xy[obj], xy[num_obj + pad]
  u = (end - start) / jnp.maximum(jnp.linalg.norm(end - start), 1e-6)
  start = start - u * 0.07  # Where the fingers come down to push.
  seg = end - start
  others = xy[:num_obj]
  t = jnp.clip(((others - start) @ seg) / jnp.maximum(seg @ seg, 1e-9), 0.0, 1.0)
  gap = jnp.linalg.norm(others - (start + t[:, None] * seg), axis=-1)
  clear = (gap > _PUSH_LANE) | (jnp.arange(num_obj) == obj)
  return jnp.all(clear) & jnp.all(jnp.abs(start) < scene.FINGER_HIGH[0] - 0.01)
