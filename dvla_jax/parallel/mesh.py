"""One `jax.sharding.Mesh` per plane (sim, actor, learner), built from the placement config.

Placement modes:
  colocated: every plane may use the same devices; a plane without explicit ids takes the
    first devices (a laptop CPU or one GPU holds all three planes).
  disaggregated: the planes use disjoint device sets; a plane without explicit ids takes the
    lowest ids no other plane uses, in the order sim, actor, learner (so 2 / 2 / 4 of 8
    devices are ids 0-1, 2-3 and 4-7).

The sim mesh has one axis, "data"; the actor and learner meshes have the axes
(data, fsdp, tensor) of the logical sharding rules in `dvla_jax.parallel.sharding`.

Several processes (`jax.distributed`): `placement` describes one process's devices, with ids
indexing that process's own devices. Every process builds its sim and actor meshes from its
own devices (each steps its own env groups and acts on them), and the learner mesh joins the
learner devices of every process along the fsdp axis (fsdp x processes, process by process):
the train state is sharded across processes, each process's rollouts feed its own learner
devices, and the weights cross processes when the learner gathers them for the actors
(`Placement.gather`). All processes must have the same number of devices.

The config validator checks what it can without JAX; what needs the device list (a plane
asking for devices that do not exist) raises `PlacementError` here, one line naming the field.
"""

from collections.abc import Mapping, Sequence
import dataclasses
import math
from typing import Any, Optional

import jax
from jax.sharding import Mesh
import numpy as np

from dvla_jax.config import placement_spec
from dvla_jax.config.errors import ConfigError

PLANES = placement_spec.PLANES
SIM_AXES = ("data",)
MODEL_AXES = placement_spec.MODEL_AXES


class PlacementError(ValueError):
  """A placement the devices present cannot hold; `str(error)` is one line naming the field."""


@dataclasses.dataclass(frozen=True)
class PlaneMeshes:
  """The three meshes of a run.

  Attributes:
    mode: "colocated" or "disaggregated".
    sim: mesh of the env groups, axis "data".
    actor: mesh of policy inference, axes (data, fsdp, tensor).
    learner: mesh of the learner update, axes (data, fsdp, tensor).
    processes: processes the learner mesh spans (the sim and actor meshes are this
      process's own).
  """

  mode: str
  sim: Mesh
  actor: Mesh
  learner: Mesh
  processes: int = 1

  def plane(self, name: str) -> Mesh:
    """The mesh of plane `name` ("sim", "actor" or "learner")."""
    return getattr(self, name)

  def device_ids(self) -> dict[str, list[int]]:
    """Device ids of every plane, in mesh order."""
    return {p: [d.id for d in self.plane(p).devices.flat] for p in PLANES}


plane_shape = placement_spec.plane_shape


def _explicit_ids(placement: Mapping[str, Any], plane: str) -> Optional[list[int]]:
  try:
    return placement_spec.device_ids(placement, plane)
  except ConfigError as e:
    raise PlacementError(str(e)) from None


def resolve_device_ids(placement: Mapping[str, Any], num_devices: int) -> dict[str, list[int]]:
  """Which device ids each plane uses (pure Python: no devices are touched).

  Args:
    placement: the `placement` config block (mode, sim, actor, learner).
    num_devices: devices present (`jax.device_count()`).

  Returns:
    plane name -> device ids, as many as the plane's mesh shape holds.

  Raises:
    PlacementError: a plane needs more devices than exist, names a device that does not
      exist, or shares devices with another plane when disaggregated.
  """
  mode = placement["mode"]
  explicit = {p: _explicit_ids(placement, p) for p in PLANES}
  ids: dict[str, list[int]] = {}
  for plane in PLANES:
    size = math.prod(plane_shape(placement, plane))
    chosen = explicit[plane]
    if chosen is not None:
      if len(chosen) != size:
        raise PlacementError(f"placement.{plane}.device_ids has {len(chosen)} ids but the "
                             f"{plane} mesh needs {size}; allowed: {size} ids")
      missing = [i for i in chosen if not 0 <= i < num_devices]
      if missing:
        raise PlacementError(f"placement.{plane}.device_ids names device {missing[0]} but "
                             f"{num_devices} devices exist; allowed: ids 0..{num_devices - 1}")
      ids[plane] = list(chosen)
      continue
    if mode == "colocated":
      if size > num_devices:
        raise PlacementError(
            f"placement.{plane} mesh {'x'.join(map(str, plane_shape(placement, plane)))} needs "
            f"{size} devices but {num_devices} exist; allowed: at most {num_devices}")
      ids[plane] = list(range(size))
      continue
    taken = {i for p in PLANES for i in (explicit[p] or ())} | {i for v in ids.values() for i in v}
    free = [i for i in range(num_devices) if i not in taken]
    if size > len(free):
      wanted = {p: math.prod(plane_shape(placement, p)) for p in PLANES}
      raise PlacementError(
          f"placement needs {sum(wanted.values())} devices (sim {wanted['sim']} + actor "
          f"{wanted['actor']} + learner {wanted['learner']}) in placement.mode='disaggregated' "
          f"but {num_devices} exist; allowed: at most {num_devices} in total")
    ids[plane] = free[:size]
  if mode == "disaggregated":
    for i, a in enumerate(PLANES):
      for b in PLANES[i + 1:]:
        common = sorted(set(ids[a]) & set(ids[b]))
        if common:
          raise PlacementError(
              f"placement.{b} shares devices {','.join(map(str, common))} with placement.{a} "
              "in placement.mode='disaggregated'; allowed: disjoint device sets")
  return ids


def make_plane_meshes(placement: Mapping[str, Any],
                      devices: Optional[Sequence[jax.Device]] = None) -> PlaneMeshes:
  """Builds the sim, actor and learner meshes of a placement.

  Args:
    placement: the `placement` config block.
    devices: the devices to place on (default `jax.devices()`); ids index this list. In a
      run of several processes the default is every process's own devices: ids index the
      process's devices, and the learner mesh spans all processes (see the module doc).

  Returns:
    The three meshes.

  Raises:
    PlacementError: as `resolve_device_ids`, or processes with unequal device counts.
  """
  if devices is None and jax.process_count() > 1:
    return _multiprocess_meshes(placement)
  devices = list(jax.devices() if devices is None else devices)
  return _meshes(placement, resolve_device_ids(placement, len(devices)), devices, [devices])


def _meshes(placement: Mapping[str, Any], ids: dict[str, list[int]],
            own: Sequence[jax.Device], per_process: Sequence[Sequence[jax.Device]]
            ) -> PlaneMeshes:
  """The sim and actor meshes from `own` devices; the learner mesh joins every process's
  learner devices process by process along fsdp (one block of the axis each). Ids index
  each process's devices."""

  def grid(devices, plane):
    return np.array([devices[i] for i in ids[plane]], dtype=object).reshape(
        plane_shape(placement, plane))

  learner = np.concatenate([grid(devs, "learner") for devs in per_process], axis=1)
  return PlaneMeshes(mode=placement["mode"], sim=Mesh(grid(own, "sim"), SIM_AXES),
                     actor=Mesh(grid(own, "actor"), MODEL_AXES),
                     learner=Mesh(learner, MODEL_AXES), processes=len(per_process))


def _multiprocess_meshes(placement: Mapping[str, Any]) -> PlaneMeshes:
  count = jax.process_count()
  per_process = [sorted((d for d in jax.devices() if d.process_index == p), key=lambda d: d.id)
                 for p in range(count)]
  sizes = sorted({len(devs) for devs in per_process})
  if len(sizes) > 1:
    raise PlacementError(f"processes hold {' or '.join(map(str, sizes))} devices; allowed: "
                         "the same number in every process")
  ids = resolve_device_ids(placement, sizes[0])
  return _meshes(placement, ids, per_process[jax.process_index()], per_process)
