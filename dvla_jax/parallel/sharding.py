"""Logical axis names -> mesh shardings, and sharded model init without materialising.

Parameters carry logical axis names (`dvla_jax.models.LOGICAL_AXES`) in their `out_sharding`
metadata; a rules mapping (config data) says which mesh axes each name is split over.
"""

from collections.abc import Mapping, Sequence

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dvla_jax.models import VLA, VLAConfig

MeshAxes = str | tuple[str, ...] | None
Rules = Mapping[str, MeshAxes]

# Mesh axes: "data" (pure data parallel), "fsdp" (data parallel with parameters split),
# "tensor" (tensor parallel inside layers).
DEFAULT_RULES: dict[str, MeshAxes] = {
    "batch": ("data", "fsdp"),
    "embed": "fsdp",
    "mlp": "tensor",
    "heads": "tensor",
    "kv": None,
    "vocab": "tensor",
    "patch": None,
    "bins": None,
}


def logical_to_pspec(logical_axes: Sequence[str | None] | None, mesh: Mesh, rules: Rules,
                     shape: Sequence[int] | None = None) -> PartitionSpec:
  """Maps logical axis names to a PartitionSpec valid on `mesh`.

  A mesh axis the mesh lacks, one already used by an earlier dimension, or one that does not
  divide the dimension (when `shape` is given) is dropped, so that dimension stays replicated
  instead of failing.

  Args:
    logical_axes: one name (or None) per array dimension; None means fully replicated.
    mesh: the target mesh.
    rules: logical name -> mesh axis name, tuple of names, or None.
    shape: the array shape, to check divisibility.

  Returns:
    The PartitionSpec.
  """
  if not logical_axes:
    return PartitionSpec()
  used: set[str] = set()
  spec = []
  for dim, name in enumerate(logical_axes):
    target = rules.get(name) if name is not None else None
    if target is None:
      spec.append(None)
      continue
    axes = (target,) if isinstance(target, str) else tuple(target)
    kept = []
    size = shape[dim] if shape is not None else None
    for axis in axes:
      if axis not in mesh.shape or axis in used:
        continue
      split = mesh.shape[axis]
      for other in kept:
        split *= mesh.shape[other]
      if size is not None and size % split:
        continue
      kept.append(axis)
    used.update(kept)
    spec.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  return PartitionSpec(*spec)


def logical_to_mesh_sharding(abstract_state, mesh: Mesh, rules: Rules = DEFAULT_RULES):
  """NamedShardings for every variable of an (abstract) nnx state.

  Args:
    abstract_state: an `nnx.State` (e.g. from `nnx.split(nnx.eval_shape(...))`) whose
      variables hold arrays or ShapeDtypeStructs and `out_sharding` logical metadata.
    mesh: the target mesh.
    rules: logical name -> mesh axes.

  Returns:
    The same structure with each variable's value replaced by its NamedSharding (usable as
    `jit` out_shardings or with `jax.device_put`).
  """

  def to_sharding(var):
    names = var.get_metadata().get("out_sharding")
    spec = logical_to_pspec(names, mesh, rules, getattr(var, "shape", None))
    return var.replace(NamedSharding(mesh, spec))

  return jax.tree.map(to_sharding, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def create_sharded_model(config: VLAConfig, mesh: Mesh, rules: Rules = DEFAULT_RULES,
                         rng: jax.Array | int = 0) -> VLA:
  """Builds a VLA whose parameters are created directly in their sharded layout.

  The model is first traced abstractly (`nnx.eval_shape`, nothing allocated), the shardings
  are derived from the logical metadata, and the init runs under `jit` with those
  out_shardings so no device ever holds the full unsharded parameters.

  Args:
    config: the model config.
    mesh: the mesh to shard over.
    rules: logical name -> mesh axes.
    rng: PRNG key or integer seed of the parameter init.

  Returns:
    The model, its parameters sharded on `mesh`.
  """

  def init(key):
    return nnx.split(VLA(config, rngs=nnx.Rngs(key)))[1]

  if isinstance(rng, int):
    rng = jax.random.key(rng)
  graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: VLA(config, rngs=nnx.Rngs(rng))))
  shardings = logical_to_mesh_sharding(abstract_state, mesh, rules)
  state = jax.jit(init, out_shardings=shardings)(rng)
  return nnx.merge(graphdef, state)
