"""Where each piece of data lives on the plane meshes: shardings and transfers between planes.

* Model state (params, optimizer state) follows the logical axis names its variables carry,
  mapped by the rules onto the plane's mesh; other leaves (step counters) are replicated.
* Batches are split along their env axis over the mesh axes of the logical name "batch"
  (data and fsdp), or replicated where they do not divide.
* Env groups live on single sim devices, group g on sim device g mod (sim devices): the MJX
  Warp renderer is built per group, so a group is never split.

Within one process `jax.device_put` to the target sharding is the transfer between planes;
when source and target sharding coincide (colocated on one device) it is free.
"""

from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

from dvla_jax.parallel import sharding as sharding_lib
from dvla_jax.parallel.mesh import PlaneMeshes


def _is_variable(x: Any) -> bool:
  return isinstance(x, nnx.Variable)


class Placement:
  """Shardings of model state, batches and env groups on a run's plane meshes."""

  def __init__(self, meshes: PlaneMeshes, rules: sharding_lib.Rules = sharding_lib.DEFAULT_RULES):
    """Args:
      meshes: the sim, actor and learner meshes.
      rules: logical axis name -> mesh axes (config data).
    """
    self.meshes = meshes
    self.rules = rules

  def mesh(self, plane: str) -> Mesh:
    return self.meshes.plane(plane)

  # -- Model state -------------------------------------------------------------------------

  def state_shardings(self, abstract_tree: Any, plane: str) -> Any:
    """NamedShardings for a pytree holding nnx Variables (params, optimizer state, ...).

    Args:
      abstract_tree: the tree, with arrays or ShapeDtypeStructs (e.g. from `jax.eval_shape`).
      plane: "actor" or "learner".

    Returns:
      The same structure with a NamedSharding per array (usable as `jit` out_shardings and
      with `jax.device_put`).
    """
    mesh = self.mesh(plane)

    def leaf(x):
      if _is_variable(x):
        names = x.get_metadata().get("out_sharding")
        spec = sharding_lib.logical_to_pspec(names, mesh, self.rules, getattr(x, "shape", None))
        return x.replace(NamedSharding(mesh, spec))
      return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(leaf, abstract_tree, is_leaf=_is_variable)

  def put_state(self, tree: Any, plane: str) -> Any:
    """Copies model state onto `plane` in its logical sharding (a no-op where it already is)."""
    return jax.device_put(tree, self.state_shardings(tree, plane))

  # -- Batches -----------------------------------------------------------------------------

  def batch_sharding(self, plane: str, shape: tuple[int, ...], batch_axis: int) -> NamedSharding:
    """Sharding of an array whose axis `batch_axis` is the env axis, on `plane`'s mesh."""
    names = [None] * len(shape)
    if len(shape) > batch_axis:
      names[batch_axis] = "batch"
    spec = sharding_lib.logical_to_pspec(names, self.mesh(plane), self.rules, shape)
    return NamedSharding(self.mesh(plane), spec)

  def put_batch(self, tree: Any, plane: str, batch_axis: int = 0) -> Any:
    """Copies every array of `tree` onto `plane`, split along `batch_axis`.

    Args:
      tree: pytree of arrays (observations `[B, ...]`, a rollout slot `[T, B, ...]`, ...);
        scalars are replicated.
      plane: "actor" or "learner".
      batch_axis: the env axis (0 for one step, 1 for time-major rollouts).

    Returns:
      The tree on the plane's mesh.
    """
    shardings = jax.tree.map(
        lambda x: self.batch_sharding(plane, tuple(x.shape), batch_axis), tree)
    return jax.device_put(tree, shardings)

  # -- Env groups --------------------------------------------------------------------------

  def sim_device(self, group: int) -> jax.Device:
    """The sim device that steps env group `group`."""
    devices = self.meshes.sim.devices.flat
    return devices[group % len(devices)]

  def put_sim(self, tree: Any, group: int) -> Any:
    """Copies `tree` onto the sim device of env group `group`."""
    return jax.device_put(tree, SingleDeviceSharding(self.sim_device(group)))
