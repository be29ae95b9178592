"""Where each piece of data lives on the plane meshes: shardings and transfers between planes.

* Model state (params, optimizer state) follows the logical axis names its variables carry,
  mapped by the rules onto the plane's mesh; other leaves (step counters) are replicated.
* Batches are split along their env axis over the mesh axes of the logical name "batch"
  (data and fsdp), or replicated where they do not divide.
* Env groups live on single sim devices, group g on sim device g mod (sim devices): the MJX
  Warp renderer is built per group, so a group is never split.

Within one process `jax.device_put` to the target sharding is the transfer between planes;
when source and target sharding coincide (colocated on one device) it is free.

When the learner mesh spans several processes (`PlaneMeshes.processes` > 1), each process's
sim and actor planes are its own devices, and JAX cannot `device_put` between an array that
spans processes and one that does not. The transfers are then same-layout ones:
  * a batch onto the learner is each process's own rows (`put_batch`): the global batch is
    every process's rows, process by process, each on that process's learner devices;
  * weights onto the actors come from a copy that the learner gathered onto each of its
    devices first (`gather`, a collective over the learner mesh): every process
    copies its own replica onto its actor devices (`put_state`, `local_replica`).
The gathers are collectives: every process must issue them in the same order, so only the
gradient lane (and the main thread before and after the lanes) issues them.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
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

  @property
  def spans_processes(self) -> bool:
    """Whether the learner mesh spans several processes."""
    return self.meshes.processes > 1

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
    """Copies model state onto `plane` in its logical sharding (a no-op where it already is).

    Onto this process's own planes (sim, actor) from arrays that span processes: those must
    be replicated (see `gather`), and this process's replica is copied.
    """
    if plane != "learner":
      tree = local_replica(tree)
    return jax.device_put(tree, self.state_shardings(tree, plane))

  def gather(self, tree: Any) -> Any:
    """Learner state as a fresh copy replicated over the learner mesh, when that mesh spans
    processes (a collective: every process calls it at the same point); otherwise `tree`.

    The learner's params snapshot is gathered so: every process then holds a whole replica
    next to its actors (`put_state`, `local_replica`).
    """
    if not self.spans_processes:
      return tree
    return _copy_to(tree, NamedSharding(self.mesh("learner"), PartitionSpec()))

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
      The tree on the plane's mesh. Onto a learner mesh that spans processes, `tree` is this
      process's rows: the result has every process's rows along `batch_axis`, process by
      process (scalars and arrays without that axis must be equal in every process).
    """
    if plane == "learner" and self.spans_processes:
      return jax.tree.map(lambda x: self._join_rows(x, batch_axis), tree)
    shardings = jax.tree.map(
        lambda x: self.batch_sharding(plane, tuple(x.shape), batch_axis), tree)
    return jax.device_put(tree, shardings)

  def _join_rows(self, x, batch_axis: int) -> jax.Array:
    shape = list(x.shape)
    if len(shape) > batch_axis:
      shape[batch_axis] *= self.meshes.processes
    sharding = self.batch_sharding("learner", tuple(shape), batch_axis)
    return jax.make_array_from_process_local_data(sharding, x, tuple(shape))

  # -- Env groups --------------------------------------------------------------------------

  def sim_device(self, group: int) -> jax.Device:
    """The sim device that steps env group `group`."""
    devices = self.meshes.sim.devices.flat
    return devices[group % len(devices)]

  def put_sim(self, tree: Any, group: int) -> Any:
    """Copies `tree` onto the sim device of env group `group`."""
    return jax.device_put(tree, SingleDeviceSharding(self.sim_device(group)))


@functools.partial(jax.jit, static_argnums=1)
def _copy_to(tree: Any, sharding: NamedSharding) -> Any:
  """A fresh copy of every leaf in `sharding` (never the input's own buffers)."""
  return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(jnp.copy(x), sharding), tree)


def local_replica(tree: Any) -> Any:
  """This process's copy of every array that spans processes (which must be replicated);
  arrays of this process alone are returned as they are."""

  def leaf(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return x
    if not x.sharding.is_fully_replicated:
      raise ValueError(f"an array of shape {x.shape} is sharded across processes "
                       f"({x.sharding}); only a replicated one can be copied within a process")
    return x.addressable_shards[0].data

  return jax.tree.map(leaf, tree)
