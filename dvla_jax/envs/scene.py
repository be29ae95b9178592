"""MJCF for the tabletop scenes: a table, a Cartesian gripper and coloured primitive objects.

Two scenes, both written for MJX (primitive geoms only, collisions only between pairs that
matter):

* `tabletop_xml`: the palm-only gripper of `touch_cube`. Bit 1 of contype/conaffinity is
  "touches the table and objects"; the palm collides with both, nothing else is enabled.
* `suite_xml`: the two-finger gripper of the LIBERO-style suite. Objects collide with each
  other, the table plane and the gripper; the gripper never touches the table (its z range
  stops above it) or itself; target pads are mocap discs that collide with nothing. The table
  collides as a plane (cheaper than box-box) and is drawn as a box.

Solver settings of the two-finger scene, chosen by measurement (pick up each of the five
objects, carry it 0.35 m at 0.04 m per 40 ms control step, plain MuJoCo): a 20 ms timestep
drops every object whatever the solref, impratio or cone; 10 ms x 4 substeps holds them all
with impratio=10 (without it the ball slips out), and 6-8 solver iterations suffice (4 drop
them). The implicitfast integrator holds them as well and made a step ~30% cheaper than
Euler (27.8 vs 38.8 ms per batch-64 step); disabling the finger coupling (equality) would
save as much again but lets the fingers drift apart. Speed, MJX Warp on the shared 2-core CPU
(load 1.5-3; the iteration count, 1 to 8, made no measurable difference): batch 64 ran ~2,300
physics steps/s (~290 policy steps/s) without rendering; with Euler it was ~1,700, and ~1,360
with one 32 px camera, batch 256 ~4,400; `touch_cube`'s smaller scene ran ~3,000 (742 policy
steps/s) at batch 64. A step's fixed cost dominates small batches on CPU.
"""

import dataclasses

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.8, 0.1),
    "blue": (0.1, 0.2, 0.95),
    "yellow": (0.95, 0.85, 0.1),
    "purple": (0.6, 0.1, 0.8),
    "orange": (1.0, 0.5, 0.0),
    "cyan": (0.1, 0.85, 0.9),
    "white": (0.95, 0.95, 0.95),
}

TABLE_HALF = 0.3  # Half-width of the square table top, metres.
GRIPPER_HOME = (0.0, 0.0, 0.15)
WORKSPACE_LOW = (-0.25, -0.25, 0.02)
WORKSPACE_HIGH = (0.25, 0.25, 0.25)


@dataclasses.dataclass(frozen=True)
class ObjectSpec:
  """One free object on the table."""

  name: str
  colour: str
  shape: str = "box"  # "box", "sphere" or "cylinder"
  half_size: float = 0.03
  mass: float = 0.1
  half_height: float | None = None  # Boxes and cylinders only; defaults to half_size.

  @property
  def height(self) -> float:
    """Half the object's height: its centre's height when it rests on the table."""
    return self.half_size if self.half_height is None else self.half_height


def _geom_size(spec: ObjectSpec) -> str:
  h, z = spec.half_size, spec.height
  if spec.shape == "box":
    return f"{h} {h} {z}"
  if spec.shape == "sphere":
    return f"{h}"
  if spec.shape == "cylinder":
    return f"{h} {z}"
  raise ValueError(f"unknown shape {spec.shape!r}; allowed: box, sphere, cylinder")


def tabletop_xml(objects: list[ObjectSpec], image_size: int = 32, timestep: float = 0.01) -> str:
  """Returns the MJCF of the scene with `objects` resting on the table.

  Args:
    objects: the free objects; each gets a body named `spec.name` with one free joint.
    image_size: offscreen framebuffer size (the MJX renderer sets its own resolution).
    timestep: physics timestep in seconds.

  Returns:
    The MJCF text.
  """
  bodies = []
  for i, spec in enumerate(objects):
    r, g, b = COLOURS[spec.colour]
    # Spread initial positions; the task's reset places them properly.
    x = -0.15 + 0.15 * (i % 3)
    y = 0.1 - 0.15 * (i // 3)
    bodies.append(
        f'<body name="{spec.name}" pos="{x} {y} {spec.half_size}">'
        f'<freejoint name="{spec.name}_free"/>'
        f'<geom name="{spec.name}_geom" type="{spec.shape}" size="{_geom_size(spec)}" '
        f'rgba="{r} {g} {b} 1" mass="{spec.mass}" contype="1" conaffinity="1" '
        f'friction="1 0.01 0.001" condim="3"/></body>'
    )
  lo, hi = WORKSPACE_LOW, WORKSPACE_HIGH
  hx, hy, hz = GRIPPER_HOME
  return f"""
<mujoco model="dvla_tabletop">
  <compiler angle="radian"/>
  <option timestep="{timestep}" iterations="6" ls_iterations="8">
    <flag warmstart="enable"/>
  </option>
  <visual><global offwidth="{max(image_size, 64)}" offheight="{max(image_size, 64)}"/></visual>
  <asset>
    <material name="table_mat" rgba="0.62 0.52 0.40 1"/>
    <material name="floor_mat" rgba="0.25 0.25 0.28 1"/>
    <material name="gripper_mat" rgba="0.15 0.15 0.15 1"/>
  </asset>
  <worldbody>
    <light name="key" pos="0.3 -0.3 1.5" dir="-0.2 0.2 -1" directional="true" diffuse="0.8 0.8 0.8"/>
    <camera name="front" pos="0 -0.52 0.62" xyaxes="1 0 0 0 0.77 0.64" fovy="48"/>
    <camera name="top" pos="0 0 0.9" xyaxes="1 0 0 0 1 0" fovy="40"/>
    <geom name="floor" type="plane" size="1 1 0.1" pos="0 0 -0.3" material="floor_mat"
          contype="0" conaffinity="0"/>
    <geom name="table" type="box" size="{TABLE_HALF} {TABLE_HALF} 0.02" pos="0 0 -0.02"
          material="table_mat" contype="1" conaffinity="1"/>
    <body name="gripper" pos="0 0 0">
      <joint name="gx" type="slide" axis="1 0 0" range="{lo[0]} {hi[0]}" damping="20"/>
      <joint name="gy" type="slide" axis="0 1 0" range="{lo[1]} {hi[1]}" damping="20"/>
      <joint name="gz" type="slide" axis="0 0 1" range="{lo[2]} {hi[2]}" damping="20"/>
      <geom name="palm" type="box" size="0.03 0.03 0.012" material="gripper_mat" mass="0.5"
            contype="1" conaffinity="1"/>
      <site name="tcp" pos="0 0 -0.012" size="0.005"/>
    </body>
    {"".join(bodies)}
  </worldbody>
  <actuator>
    <position name="ax" joint="gx" kp="300" ctrlrange="{lo[0]} {hi[0]}"/>
    <position name="ay" joint="gy" kp="300" ctrlrange="{lo[1]} {hi[1]}"/>
    <position name="az" joint="gz" kp="300" ctrlrange="{lo[2]} {hi[2]}"/>
  </actuator>
  <keyframe><key name="home" qpos="{hx} {hy} {hz} {_object_qpos(objects)}"
    ctrl="{hx} {hy} {hz}"/></keyframe>
</mujoco>
"""


def _object_qpos(objects: list[ObjectSpec]) -> str:
  parts = []
  for i, spec in enumerate(objects):
    x = -0.15 + 0.15 * (i % 3)
    y = 0.1 - 0.15 * (i // 3)
    parts.append(f"{x} {y} {spec.half_size} 1 0 0 0")
  return " ".join(parts)


# -- Two-finger scene -------------------------------------------------------------------------

FINGER_TRAVEL = 0.05  # Each finger's slide range, metres: 0 = open, FINGER_TRAVEL = shut.
FINGER_INNER_OPEN = 0.049  # Inner face to gripper centre when open (gap 9.8 cm).
FINGER_HALF = (0.012, 0.006, 0.025)  # Finger box half sizes (x, y, z).
FINGER_CENTRE_Z = 0.012  # Finger box centre above the TCP.
PAD_RADIUS = 0.045
FINGER_LOW = (-0.25, -0.25, 0.015)  # TCP workspace: fingertips stop 2 mm above the table.
FINGER_HIGH = (0.25, 0.25, 0.25)
FINGER_HOME = (0.0, -0.12, 0.16)


def finger_closure(half_width: float) -> float:
  """Finger slide position at which the fingers touch an object `half_width` wide."""
  return FINGER_INNER_OPEN - half_width


def suite_xml(objects: list[ObjectSpec], num_pads: int, image_size: int = 32,
              timestep: float = 0.01, iterations: int = 8, ls_iterations: int = 8) -> str:
  """Returns the MJCF of the two-finger scene: objects, target pads and a Cartesian gripper.

  Collisions: objects collide with each other, the table plane and the gripper; the gripper
  never touches the table (its z range stops above it) and the pads collide with nothing.

  Args:
    objects: the free objects (body `spec.name`, free joint `spec.name + "_free"`).
    num_pads: flat target regions, mocap bodies `pad0`, `pad1`, ... placed by the task.
    image_size: offscreen framebuffer size.
    timestep: physics timestep in seconds.
    iterations: constraint solver iterations.
    ls_iterations: line-search iterations.

  Returns:
    The MJCF text.
  """
  fx, fy, fz = FINGER_HALF
  lo, hi = FINGER_LOW, FINGER_HIGH
  hx, hy, hz = FINGER_HOME
  bodies = []
  for i, spec in enumerate(objects):
    r, g, b = COLOURS[spec.colour]
    bodies.append(
        f'<body name="{spec.name}" pos="{-0.15 + 0.1 * i} 0.15 {spec.height}">'
        f'<freejoint name="{spec.name}_free"/>'
        f'<geom name="{spec.name}_geom" type="{spec.shape}" size="{_geom_size(spec)}" '
        f'rgba="{r} {g} {b} 1" mass="{spec.mass}" class="object"/></body>')
  pads = []
  for i in range(num_pads):
    pads.append(
        f'<body name="pad{i}" mocap="true" pos="{-0.15 + 0.3 * i} -0.15 0.0005">'
        f'<geom name="pad{i}_geom" type="cylinder" size="{PAD_RADIUS} 0.0005" '
        f'rgba="0.5 0.5 0.5 1" contype="0" conaffinity="0"/></body>')
  obj_qpos = " ".join(f"{-0.15 + 0.1 * i} 0.15 {s.height} 1 0 0 0"
                      for i, s in enumerate(objects))
  finger = (f'type="box" size="{fx} {fy} {fz}" pos="0 0 {FINGER_CENTRE_Z}" '
            f'material="finger_mat" mass="0.05" class="gripper"')
  y0 = FINGER_INNER_OPEN + fy
  return f"""
<mujoco model="dvla_suite">
  <compiler angle="radian"/>
  <option timestep="{timestep}" iterations="{iterations}" ls_iterations="{ls_iterations}"
          impratio="10" integrator="implicitfast">
    <flag warmstart="enable"/>
  </option>
  <visual><global offwidth="{max(image_size, 64)}" offheight="{max(image_size, 64)}"/></visual>
  <default>
    <default class="object">
      <geom contype="1" conaffinity="3" condim="3" friction="1 0.005 0.0001"/>
    </default>
    <default class="gripper">
      <geom contype="2" conaffinity="0" condim="3" friction="1.5 0.005 0.0001"/>
    </default>
  </default>
  <asset>
    <material name="table_mat" rgba="0.62 0.52 0.40 1"/>
    <material name="floor_mat" rgba="0.25 0.25 0.28 1"/>
    <material name="gripper_mat" rgba="0.15 0.15 0.15 1"/>
    <material name="finger_mat" rgba="0.35 0.35 0.38 1"/>
  </asset>
  <worldbody>
    <light name="key" pos="0.3 -0.3 1.5" dir="-0.2 0.2 -1" directional="true"
           diffuse="0.8 0.8 0.8" specular="0.1 0.1 0.1"/>
    <camera name="front" pos="0 -0.43 0.47" xyaxes="1 0 0 0 0.74 0.67" fovy="45"/>
    <camera name="top" pos="0 0 0.75" xyaxes="1 0 0 0 1 0" fovy="38"/>
    <geom name="floor" type="plane" size="1 1 0.1" pos="0 0 -0.3" material="floor_mat"
          contype="0" conaffinity="0"/>
    <geom name="table" type="box" size="{TABLE_HALF} {TABLE_HALF} 0.02" pos="0 0 -0.02"
          material="table_mat" contype="0" conaffinity="0"/>
    <geom name="table_plane" type="plane" size="{TABLE_HALF} {TABLE_HALF} 0.1" group="3"
          contype="1" conaffinity="1"/>
    {"".join(pads)}
    <body name="gripper" pos="0 0 0" gravcomp="1">
      <joint name="gx" type="slide" axis="1 0 0" range="{lo[0]} {hi[0]}" damping="30"/>
      <joint name="gy" type="slide" axis="0 1 0" range="{lo[1]} {hi[1]}" damping="30"/>
      <joint name="gz" type="slide" axis="0 0 1" range="{lo[2]} {hi[2]}" damping="30"/>
      <geom name="palm" type="box" size="0.02 {y0 + fy} 0.008"
            pos="0 0 {FINGER_CENTRE_Z + fz + 0.008}" material="gripper_mat" mass="0.4"
            class="gripper"/>
      <site name="tcp" pos="0 0 0" size="0.005"/>
      <camera name="wrist" pos="0 0 0.036" xyaxes="1 0 0 0 1 0" fovy="90"/>
      <body name="finger_l" pos="0 {y0} 0" gravcomp="1">
        <joint name="fl" type="slide" axis="0 -1 0" range="0 {FINGER_TRAVEL}" damping="5"/>
        <geom name="finger_l_geom" {finger}/>
      </body>
      <body name="finger_r" pos="0 {-y0} 0" gravcomp="1">
        <joint name="fr" type="slide" axis="0 1 0" range="0 {FINGER_TRAVEL}" damping="5"/>
        <geom name="finger_r_geom" {finger}/>
      </body>
    </body>
    {"".join(bodies)}
  </worldbody>
  <equality><joint joint1="fr" joint2="fl"/></equality>
  <actuator>
    <position name="ax" joint="gx" kp="600" ctrlrange="{lo[0]} {hi[0]}"/>
    <position name="ay" joint="gy" kp="600" ctrlrange="{lo[1]} {hi[1]}"/>
    <position name="az" joint="gz" kp="600" ctrlrange="{lo[2]} {hi[2]}"/>
    <position name="agrip" joint="fl" kp="200" ctrlrange="0 {FINGER_TRAVEL}"/>
  </actuator>
  <keyframe><key name="home" qpos="{hx} {hy} {hz} 0 0 {obj_qpos}"
    ctrl="{hx} {hy} {hz} 0"/></keyframe>
</mujoco>
"""
