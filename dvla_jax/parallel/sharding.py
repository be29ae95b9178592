"""Logical axis names -> mesh shardings, and sharded model init without materialising.

Parameters carry logical axis names (`dvla_jax.models.LOGICAL_AXES`) in their `out_sharding`
metadata; a rules mapping (config data) says which mesh axes each name is split over.

Dimensions that do not divide: the sizes a model config chooses (width, heads, head size, MLP
size, of the trunk and of the ViT) must divide the mesh axes their logical names map to, and
`check_mesh_divides` says so in one line at start-up; silently replicating a 7B model's MLP
because `tensor` does not divide it would multiply its memory unnoticed. Dimensions fixed by
the data rather than the config (the 259-token byte vocabulary, the 256 action bins, a patch's
pixels, proprio) are small, and `logical_to_pspec` keeps them whole when a mesh axis does not
divide them.
"""

import math
from collections.abc import Mapping, Sequence

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dvla_jax.models import VLA, VLAConfig

MeshAxes = str | tuple[str, ...] | None
Rules = Mapping[str, MeshAxes]

MeshShape = Mapping[str, int]

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
    "lora": "fsdp",  # An adapter's rank: split like the weights it adapts (ZeRO), where it divides.
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


class MeshDivisionError(ValueError):
  """A mesh whose axes do not split a model dimension evenly; `str(error)` is one line."""


def _split_dims(config: VLAConfig) -> list[tuple[str, str, int]]:
  """(logical name, config field, size) of every config-chosen dimension a rule may split."""
  c = config
  dims = [("embed", "width", c.width), ("heads", "num_heads", c.num_heads),
          ("kv", "width/num_heads", c.width // c.num_heads), ("mlp", "mlp_dim", c.mlp_dim)]
  if c.vit_depth:
    dims += [("embed", "vit_width", c.vit_width), ("heads", "vit_num_heads", c.vit_num_heads),
             ("kv", "vit_width/vit_num_heads", c.vit_width // c.vit_num_heads),
             ("mlp", "vit_mlp_dim", c.vit_mlp_dim)]
  return dims


def _divisors(n: int) -> str:
  found = [d for d in range(1, n + 1) if n % d == 0]
  return ", ".join(map(str, found[:10])) + (", ..." if len(found) > 10 else "")


def check_mesh_divides(config: VLAConfig, mesh_shape: MeshShape | Mesh,
                       rules: Rules = DEFAULT_RULES, where: str = "mesh") -> None:
  """Checks that the mesh splits every config-chosen model dimension evenly.

  Call it at start-up, before anything is compiled, for each mesh a model is sharded on.

  Args:
    config: the model config.
    mesh_shape: mesh axis name -> size (or a Mesh / AbstractMesh).
    rules: logical name -> mesh axes.
    where: how the message names the mesh, e.g. "placement.learner".

  Raises:
    MeshDivisionError: one line naming the model field, the mesh axes and what is allowed,
      e.g. "placement.learner (tensor=3) does not divide model num_heads=4 (logical axis
      'heads'); allowed: tensor in 1, 2, 4".
  """
  shape = dict(mesh_shape.shape if hasattr(mesh_shape, "shape") else mesh_shape)
  for name, field, size in _split_dims(config):
    target = rules.get(name)
    if target is None:
      continue
    axes = [a for a in ((target,) if isinstance(target, str) else target)
            if shape.get(a, 1) > 1]
    split = math.prod(shape[a] for a in axes)
    if size % split:
      used = ",".join(f"{a}={shape[a]}" for a in axes)
      allowed = (f"{axes[0]} in {_divisors(size)}" if len(axes) == 1 else
                 f"{' * '.join(axes)} in {_divisors(size)}")
      raise MeshDivisionError(f"{where} ({used}) does not divide model {field}={size} "
                              f"(logical axis {name!r}); allowed: {allowed}")


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
