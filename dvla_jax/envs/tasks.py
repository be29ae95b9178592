"""The LIBERO-style task table: named tasks of the two-finger scene, grouped into four suites.

Every task runs in the same scene (`SCENE_OBJECTS` plus `NUM_PADS` target pads), so one compiled
env can serve any mix of tasks: a task is data (`TaskSpec` -> integer arrays in `info`), not a
separate program. The suites mirror LIBERO's:

  spatial  same objects (two identical cubes), the target is named by where it is.
  object   same goal (place it on a pad), a different target object per task; colours shuffle.
  goal     one fixed layout, a different goal per task.
  long     two stages, e.g. place one object and then push another.
"""

import dataclasses
import itertools

from dvla_jax.envs import scene

# Families: what a stage asks for. The success predicate and the expert dispatch on these.
REACH, PUSH, LIFT, PLACE, STACK = range(5)
FAMILIES = ("reach", "push", "lift", "place", "stack")
SUITES = ("spatial", "object", "goal", "long")

SCENE_OBJECTS = (
    scene.ObjectSpec("cube_a", "red", "box", 0.02),
    scene.ObjectSpec("cube_b", "blue", "box", 0.02),
    scene.ObjectSpec("cylinder", "yellow", "cylinder", 0.02),
    scene.ObjectSpec("ball", "purple", "sphere", 0.02),
    scene.ObjectSpec("block", "cyan", "box", 0.02, half_height=0.03),
)
SHAPE_WORDS = ("cube", "cube", "cylinder", "ball", "block")
NUM_PADS = 2
PAD_COLOURS = ("green", "orange")
# Entities that carry a colour: the objects, then the pads.
NUM_ENTITIES = len(SCENE_OBJECTS) + NUM_PADS
PALETTE = ("red", "green", "blue", "yellow", "purple", "orange", "cyan", "white")
# Spatial relations that pick one of the two cubes: the key is minimised over the cubes.
RELATIONS = ("left", "right", "front", "back", "near_ball")
RELATION_WORDS = {
    "left": "the cube on the left", "right": "the cube on the right",
    "front": "the front cube", "back": "the back cube", "near_ball": "the cube next to the ball",
}
# Where each entity sits in the fixed ("goal" suite) layout, before a small jitter.
FIXED_XY = ((-0.12, 0.04), (0.0, 0.13), (0.12, 0.04), (0.16, 0.15), (-0.16, 0.15),
            (-0.12, -0.13), (0.12, -0.13))


@dataclasses.dataclass(frozen=True)
class Stage:
  """One sub-goal: move object `obj` (a name, or a relation from RELATIONS) to `dest`.

  `dest` is a pad index for push/place, an object name for stack, unused for reach/lift.
  """

  family: int
  obj: str
  dest: int | str = 0


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """A named task.

  Attributes:
    name: registry name.
    suite: one of SUITES.
    description: one line for `--list`.
    stages: one or two sub-goals, all of which must hold at once for success.
    phrases: instruction templates; `{a}`/`{p}` name stage 1's object/destination, `{b}`/`{q}`
      stage 2's.
    layout: "random" (shuffled positions) or "fixed" (the goal suite's layout, jittered).
    colours: "fixed", "shuffle" (a new palette per episode) or "twin" (both cubes red).
    episode_length: the episode limit in policy steps at action_horizon 2.
  """

  name: str
  suite: str
  description: str
  stages: tuple[Stage, ...]
  phrases: tuple[str, ...]
  layout: str = "random"
  colours: str = "fixed"
  episode_length: int = 40


def object_index(name: str) -> int:
  return [o.name for o in SCENE_OBJECTS].index(name)


def _place_phrases(obj="{a}", dest="{p}"):
  return (f"put the {obj} on the {dest}", f"pick up the {obj} and place it on the {dest}",
          f"move the {obj} onto the {dest}")


def _spatial(rel: str) -> TaskSpec:
  words = RELATION_WORDS[rel]
  return TaskSpec(
      f"spatial_{rel}_cube", "spatial",
      f"two identical cubes: place {words} on the green pad",
      (Stage(PLACE, rel, 0),),
      (f"pick up {words} and place it on the green pad",
       f"put {words} on the green pad", f"move {words} onto the green pad"),
      colours="twin")


def _object(obj: str) -> TaskSpec:
  word = SHAPE_WORDS[object_index(obj)]
  return TaskSpec(f"object_place_{word}", "object",
                  f"place the {word} on the pad the instruction names; colours shuffle",
                  (Stage(PLACE, obj, 1),), _place_phrases(), colours="shuffle")


TASKS: tuple[TaskSpec, ...] = (
    *(_spatial(rel) for rel in RELATIONS),
    *(_object(obj) for obj in ("cube_a", "cylinder", "ball", "block")),
    TaskSpec("goal_touch_ball", "goal", "fixed layout: touch the ball",
             (Stage(REACH, "ball"),),
             ("touch the {a}", "reach for the {a}", "put the gripper on the {a}"),
             layout="fixed", episode_length=24),
    TaskSpec("goal_push_cube", "goal", "fixed layout: push the red cube onto the green pad",
             (Stage(PUSH, "cube_a", 0),),
             ("push the {a} to the {p}", "slide the {a} onto the {p}",
              "shove the {a} over to the {p}"), layout="fixed"),
    TaskSpec("goal_lift_cylinder", "goal", "fixed layout: pick up the cylinder and lift it",
             (Stage(LIFT, "cylinder"),),
             ("pick up the {a}", "lift the {a}", "raise the {a} off the table"),
             layout="fixed", episode_length=30),
    TaskSpec("goal_place_cube", "goal", "fixed layout: place the blue cube on the orange pad",
             (Stage(PLACE, "cube_b", 1),), _place_phrases(), layout="fixed"),
    TaskSpec("goal_stack_cubes", "goal", "fixed layout: stack the red cube on the blue cube",
             (Stage(STACK, "cube_a", "cube_b"),),
             ("stack the {a} on the {p}", "put the {a} on top of the {p}",
              "place the {a} on the {p}"), layout="fixed"),
    TaskSpec("long_push_then_place", "long",
             "goal layout: push the red cube to the green pad, then put the blue cube on the "
             "orange pad",
             (Stage(PUSH, "cube_a", 0), Stage(PLACE, "cube_b", 1)),
             ("push the {a} to the {p} and then put the {b} on the {q}",
              "first slide the {a} onto the {p}, then place the {b} on the {q}"),
             layout="fixed", episode_length=64),
    TaskSpec("long_place_then_stack", "long",
             "put the blue cube on the orange pad, then stack the red cube on it",
             (Stage(PLACE, "cube_b", 1), Stage(STACK, "cube_a", "cube_b")),
             ("put the {a} on the {p} and then stack the {b} on it",
              "first place the {a} on the {p}, then put the {b} on top of it"),
             episode_length=64),
    TaskSpec("long_place_two", "long",
             "put the cylinder on the green pad and the ball on the orange pad",
             (Stage(PLACE, "cylinder", 0), Stage(PLACE, "ball", 1)),
             ("put the {a} on the {p} and the {b} on the {q}",
              "place the {a} on the {p}, then the {b} on the {q}"),
             episode_length=64),
    TaskSpec("long_stack_then_place", "long",
             "stack the red cube on the blue cube, then put the block on the green pad",
             (Stage(STACK, "cube_a", "cube_b"), Stage(PLACE, "block", 0)),
             ("stack the {a} on the {p} and then put the {b} on the {q}",
              "first put the {a} on top of the {p}, then place the {b} on the {q}"),
             episode_length=64),
)
BY_NAME = {t.name: t for t in TASKS}


def default_colours(spec: TaskSpec) -> tuple[int, ...]:
  """Palette indices of every entity (objects, then pads) when colours do not shuffle."""
  names = [o.colour for o in SCENE_OBJECTS] + list(PAD_COLOURS)
  if spec.colours == "twin":
    names[object_index("cube_b")] = names[object_index("cube_a")]
  return tuple(PALETTE.index(n) for n in names)


def mentioned_entities(spec: TaskSpec) -> tuple[tuple[str, int], ...]:
  """The (slot, entity) pairs an instruction names: slots a, p (stage 1) and b, q (stage 2).

  A relation target (spatial suite) is named by its relation, so it has no entity here.
  """
  out = []
  for (obj_slot, dest_slot), stage in zip((("a", "p"), ("b", "q")), spec.stages):
    if stage.obj not in RELATIONS:
      out.append((obj_slot, object_index(stage.obj)))
    if stage.family in (PUSH, PLACE):
      out.append((dest_slot, len(SCENE_OBJECTS) + int(stage.dest)))
    elif stage.family == STACK:
      out.append((dest_slot, object_index(str(stage.dest))))
  return tuple(out)


def _entity_words(entity: int, colour: int) -> str:
  if entity >= len(SCENE_OBJECTS):
    return f"{PALETTE[colour]} pad"
  return f"{PALETTE[colour]} {SHAPE_WORDS[entity]}"


def instructions(spec: TaskSpec) -> list[str]:
  """Every instruction `spec` can issue, in the order `instruction_index` counts them.

  Index = phrase * C^k + sum_i colour(entity_i) * C^(k-1-i), with C the number of colour
  choices (the palette if colours shuffle, else 1) and k the entities the phrases name.
  """
  mentioned = mentioned_entities(spec)
  fixed = default_colours(spec)
  choices = [range(len(PALETTE)) if spec.colours == "shuffle" else (fixed[e],)
             for _, e in mentioned]
  out = []
  for phrase in spec.phrases:
    for colours in itertools.product(*choices):
      words = {slot: _entity_words(e, c) for (slot, e), c in zip(mentioned, colours)}
      out.append(phrase.format(**words))
  return out


def suite_tasks(suite: str) -> list[str]:
  """Task names of one suite, in table order."""
  if suite not in SUITES:
    raise ValueError(f"unknown suite {suite!r}; allowed: {', '.join(SUITES)}")
  return [t.name for t in TASKS if t.suite == suite]
