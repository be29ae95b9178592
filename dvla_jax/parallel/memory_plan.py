"""Ahead-of-time device-memory plan of the learner and actor steps, from shapes and shardings.

Nothing is allocated: parameter shapes come from `nnx.eval_shape`, their per-device shards
from the logical sharding rules on an `AbstractMesh` (any size, so a 1T trunk on thousands
of devices plans in seconds), and activations from an analytic per-layer count.

Terms, bytes per device:
  learner step: parameters, optimizer state (Adam's two moments in float32), gradients
    (sharded like the parameters), activations saved for the backward pass, FSDP gather
    buffers (two blocks' weights all-gathered over the fsdp axes: the one in use and the
    prefetched next), and the input batch.
  actor step: parameters, the incoming weight buffer (the static pool's double buffer),
    forward activations (one block's working set: nothing is kept for a backward pass),
    FSDP gather buffers, and the observation batch.

Activation count per transformer block and device, with b samples, s tokens, width w,
h/t heads and m/t MLP units per device (t: the tensor split) and p bytes per compute element:
  b*s*w*p * 4            block input, attention-norm output, mid residual, MLP-norm output
  b*s*(w/t)*p * 4        q, k, v and the attention context
  b*(h/t)*s*s * (4 + p)  float32 softmax output plus its compute-dtype copy (4 when p == 4)
  b*s*(m/t)*p * 2        MLP hidden before and after the GELU
With remat a trunk block keeps only its input, and one block is recomputed at a time. The
count is an estimate of what XLA keeps; it leaves out fusion temporaries and the backward
pass's transient buffers, which `programs.aot.compile_update` measures on meshes that exist here.
"""

from collections.abc import Mapping
import dataclasses
import math
from typing import Any, Optional

from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh
from jax.sharding import Mesh
import numpy as np

from dvla_jax import models
from dvla_jax.models import trainable as trainable_lib
from dvla_jax.parallel import sharding as sharding_lib

GIB = 1024 ** 3
MESH_AXES = ("data", "fsdp", "tensor")
_ADAM_MOMENT_BYTES = 2 * 4  # mu and nu, float32 per parameter
_ADAM_COUNT_BYTES = 4  # the int32 step count


@dataclasses.dataclass(frozen=True)
class StepPlan:
  """Per-device bytes of one step, term by term (insertion order is print order)."""

  name: str
  terms: dict[str, int]

  @property
  def total(self) -> int:
    return sum(self.terms.values())

  def verdict(self, device_bytes: int) -> str:
    """One line: fits, or does not fit with the term that is over (or the largest one)."""
    total = self.total
    if total <= device_bytes:
      return (f"{self.name} step fits: {total / GIB:.2f} GiB of {device_bytes / GIB:.2f} GiB "
              f"per device ({100 * total / device_bytes:.0f}%)")
    name, size = max(self.terms.items(), key=lambda kv: kv[1])
    over = [k for k, v in self.terms.items() if v > device_bytes]
    why = (f"{', '.join(over)} alone exceed{'s' if len(over) == 1 else ''} the device memory"
           if over else f"largest term: {name} {size / GIB:.2f} GiB")
    return (f"{self.name} step DOES NOT FIT: needs {total / GIB:.2f} GiB per device, "
            f"{device_bytes / GIB:.2f} GiB available, over by "
            f"{(total - device_bytes) / GIB:.2f} GiB; {why}")


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
  """The plan of one model on one learner mesh and one actor mesh."""

  config: models.VLAConfig
  mesh: dict[str, int]
  actor_mesh: dict[str, int]
  batch: int
  actor_batch: int
  num_params: int
  learner: StepPlan
  actor: StepPlan

  def fits(self, device_bytes: int) -> bool:
    return self.learner.total <= device_bytes and self.actor.total <= device_bytes


def parse_mesh(text: str) -> dict[str, int]:
  """"data=4,fsdp=32,tensor=8" -> {"data": 4, "fsdp": 32, "tensor": 8} (missing axes are 1).

  Raises:
    ValueError: an unknown axis, a repeated axis or a size that is not a positive integer.
  """
  shape = {axis: 1 for axis in MESH_AXES}
  seen = set()
  for part in filter(None, (p.strip() for p in text.split(","))):
    axis, _, size = part.partition("=")
    if axis not in shape or axis in seen or not size.isdigit() or int(size) < 1:
      raise ValueError(f"mesh {text!r}: bad entry {part!r}; allowed: comma-separated "
                       f"AXIS=SIZE with AXIS in {', '.join(MESH_AXES)} (each once), SIZE >= 1")
    seen.add(axis)
    shape[axis] = int(size)
  return shape


def abstract_mesh(shape: Mapping[str, int]) -> AbstractMesh:
  """A device-free mesh of `shape` (axes in `MESH_AXES` order)."""
  return AbstractMesh(tuple(shape[a] for a in MESH_AXES), MESH_AXES)


def _abstract_params(config: models.VLAConfig):
  model = nnx.eval_shape(lambda: models.VLA(config, rngs=nnx.Rngs(0)))
  return nnx.split(model)


def _param_vars(state) -> list[Any]:
  return jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def _shard_elems(var, mesh, rules) -> int:
  """Elements of `var` one device holds under `rules` on `mesh`."""
  names = var.get_metadata().get("out_sharding")
  spec = sharding_lib.logical_to_pspec(names, mesh, rules, var.shape)
  split = 1
  for entry in spec:
    for axis in (entry,) if isinstance(entry, str) else (entry or ()):
      split *= mesh.shape[axis]
  return int(np.prod(var.shape)) // split


def _split(name: str, size: int, mesh, rules) -> int:
  """How many ways the logical axis `name` of length `size` is split on `mesh`."""
  spec = sharding_lib.logical_to_pspec((name,), mesh, rules, (size,))
  entry = spec[0] if len(spec) else None
  axes = (entry,) if isinstance(entry, str) else (entry or ())
  return math.prod(mesh.shape[a] for a in axes)


def _block_activations(b, s, w, heads, mlp, head_dim, p) -> int:
  """Bytes one block keeps for backward on one device (module docstring formula)."""
  attn_elem = 4 + (p if p != 4 else 0)
  return int(b * s * w * p * 4 + b * s * heads * head_dim * p * 4
             + b * heads * s * s * attn_elem + b * s * mlp * p * 2)


def _activations(c: models.VLAConfig, b: int, mesh, rules, remat: bool, training: bool) -> int:
  p = jnp.dtype(c.dtype).itemsize
  t_heads = _split("heads", c.num_heads, mesh, rules)
  t_mlp = _split("mlp", c.mlp_dim, mesh, rules)
  s = c.seq_len
  trunk = _block_activations(b, s, c.width, c.num_heads // t_heads, c.mlp_dim // t_mlp,
                             c.width // c.num_heads, p)
  vit = 0
  if c.vit_depth:
    vh = _split("heads", c.vit_num_heads, mesh, rules)
    vm = _split("mlp", c.vit_mlp_dim, mesh, rules)
    vit = _block_activations(b * c.num_cameras, c.patches_per_camera, c.vit_width,
                             c.vit_num_heads // vh, c.vit_mlp_dim // vm,
                             c.vit_width // c.vit_num_heads, p)
  # Inputs to the trunk (patches, concatenated tokens) and the float32 logits + log-softmax.
  edges = (b * c.num_cameras * c.patches_per_camera * c.patch_size ** 2 * 3 * p
           + 2 * b * s * c.width * p + 2 * b * c.num_action_tokens * c.num_bins * 4)
  if not training:
    return max(trunk, vit) + edges
  if remat:
    trunk_total = c.depth * b * s * c.width * p + trunk
  else:
    trunk_total = c.depth * trunk
  return trunk_total + c.vit_depth * vit + edges


def _gather_bytes(state, mesh, rules) -> int:
  """Two blocks' weights all-gathered over fsdp (unchanged when fsdp is 1)."""
  if mesh.shape.get("fsdp", 1) == 1:
    return 0
  no_fsdp = {k: v for k, v in rules.items()}
  for k, v in rules.items():
    axes = (v,) if isinstance(v, str) else (v or ())
    kept = tuple(a for a in axes if a != "fsdp")
    no_fsdp[k] = kept if kept else None
  best = 0
  for blocks in ("blocks", "vit_blocks"):
    if blocks in state and len(state[blocks]):
      block = state[blocks][0]
      size = sum(_shard_elems(v, mesh, no_fsdp) * v.dtype.itemsize for v in _param_vars(block))
      best = max(best, size)
  return 2 * best


def _batch_bytes(c: models.VLAConfig, b: int, training: bool) -> int:
  obs = (c.num_cameras * c.image_size ** 2 * 3 + 4 * c.max_text_len + 4 * c.proprio_dim)
  targets = 4 * c.num_action_tokens + 4 if training else 0  # action tokens, value target
  return b * (obs + targets)


def per_device_batch(batch: int, mesh, rules=sharding_lib.DEFAULT_RULES) -> int:
  """Samples per device when `batch` is split over the mesh axes of logical "batch"."""
  return math.ceil(batch / _split("batch", batch, mesh, rules))


def plan_memory(config: models.VLAConfig, mesh_shape: Mapping[str, int], *,
                batch: Optional[int] = None, actor_mesh_shape: Optional[Mapping[str, int]] = None,
                actor_batch: Optional[int] = None,
                rules: sharding_lib.Rules = sharding_lib.DEFAULT_RULES) -> MemoryPlan:
  """Plans the per-device memory of the learner and actor steps.

  Args:
    config: the model config (its dtype, param_dtype and remat are used).
    mesh_shape: learner mesh, axis -> size (axes of `MESH_AXES`).
    batch: learner batch (samples per update step); default one per data-parallel rank.
    actor_mesh_shape: actor mesh (default: the learner mesh, colocated).
    actor_batch: samples per inference step (default: `batch`).
    rules: logical name -> mesh axes.

  Returns:
    The plan.

  Raises:
    sharding.MeshDivisionError: a mesh does not divide the model's dimensions.
  """
  mesh_shape = {a: int(mesh_shape.get(a, 1)) for a in MESH_AXES}
  actor_shape = {a: int((actor_mesh_shape or mesh_shape).get(a, 1)) for a in MESH_AXES}
  sharding_lib.check_mesh_divides(config, mesh_shape, rules, where="learner mesh")
  sharding_lib.check_mesh_divides(config, actor_shape, rules, where="actor mesh")
  mesh, actor_mesh = abstract_mesh(mesh_shape), abstract_mesh(actor_shape)
  batch = batch or mesh_shape["data"] * mesh_shape["fsdp"]
  actor_batch = actor_batch or batch
  _, state = _abstract_params(config)
  variables = _param_vars(state)
  num_params = sum(int(np.prod(v.shape)) for v in variables)
  # Only the trainable parameters (`VLAConfig.trainable`, e.g. LoRA adapters and heads) have
  # optimizer state and weight gradients.
  groups = set(trainable_lib.parse(config.trainable, config.lora_rank))
  paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(
      state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]]
  trained = [v for path, v in zip(paths, variables, strict=True)
             if trainable_lib.group_of(path) in groups]

  def param_bytes(m, which=variables):
    return sum(_shard_elems(v, m, rules) * v.dtype.itemsize for v in which)

  learner_params = param_bytes(mesh)
  trained_elems = sum(_shard_elems(v, mesh, rules) for v in trained)
  b = per_device_batch(batch, mesh, rules)
  learner = StepPlan("learner", {
      "parameters": learner_params,
      "optimizer state": trained_elems * _ADAM_MOMENT_BYTES + _ADAM_COUNT_BYTES,
      "gradients": param_bytes(mesh, trained),
      "activations": _activations(config, b, mesh, rules, config.remat, training=True),
      "fsdp gather": _gather_bytes(state, mesh, rules),
      "batch": _batch_bytes(config, b, training=True),
  })
  actor_params = param_bytes(actor_mesh)
  ab = per_device_batch(actor_batch, actor_mesh, rules)
  actor = StepPlan("actor", {
      "parameters": actor_params,
      # The next version's copy: with partial fine-tuning, of the trainable leaves only.
      "incoming weights": param_bytes(actor_mesh, trained),
      "activations": _activations(config, ab, actor_mesh, rules, False, training=False),
      "fsdp gather": _gather_bytes(state, actor_mesh, rules),
      "batch": _batch_bytes(config, ab, training=False),
  })
  return MemoryPlan(config=config, mesh=mesh_shape, actor_mesh=actor_shape, batch=batch,
                    actor_batch=actor_batch, num_params=num_params, learner=learner,
                    actor=actor)


def format_plan(plan: MemoryPlan, device_bytes: Optional[int] = None) -> str:
  """A human-readable table of the plan, with verdicts when `device_bytes` is given."""
  def mesh_text(shape):
    return ",".join(f"{a}={shape[a]}" for a in MESH_AXES)

  c = plan.config
  n = plan.num_params
  scale = next((x for x in ((1e12, "T"), (1e9, "B"), (1e6, "M")) if n >= x[0]), (1e3, "K"))
  lines = [f"model: {n:,} parameters ({n / scale[0]:.3g}{scale[1]}), "
           f"dtype {c.dtype}, param_dtype {c.param_dtype}, remat {c.remat}, "
           f"sequence {c.seq_len} tokens",
           f"learner mesh {mesh_text(plan.mesh)} ({math.prod(plan.mesh.values())} devices), "
           f"batch {plan.batch}; actor mesh {mesh_text(plan.actor_mesh)} "
           f"({math.prod(plan.actor_mesh.values())} devices), batch {plan.actor_batch}"]
  for step in (plan.learner, plan.actor):
    lines.append(f"{step.name} step, per device:")
    for name, size in step.terms.items():
      lines.append(f"  {name:18s} {size / GIB:12.4f} GiB  {size:>18,} B")
    lines.append(f"  {'total':18s} {step.total / GIB:12.4f} GiB  {step.total:>18,} B")
  if device_bytes is not None:
    lines += [plan.learner.verdict(device_bytes), plan.actor.verdict(device_bytes)]
  return "\n".join(lines)


# -- Ahead-of-time compilation on meshes that exist here ----------------------------------------


def make_mesh(shape: Mapping[str, int], devices=None) -> Mesh:
  """A real mesh of `shape` over the first devices (Auto axes, as the trainer uses)."""
  devices = list(jax.devices() if devices is None else devices)
  n = math.prod(shape[a] for a in MESH_AXES)
  if n > len(devices):
    raise ValueError(f"mesh needs {n} devices, {len(devices)} exist")
  grid = np.array(devices[:n], dtype=object).reshape(tuple(shape[a] for a in MESH_AXES))
  return Mesh(grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def compiled_memory(compiled) -> Optional[dict[str, int]]:
  """`compiled.memory_analysis()` as a dict of per-device byte counts (None if unavailable)."""
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  keys = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
          "temp_size_in_bytes", "generated_code_size_in_bytes")
  return {k: int(getattr(stats, k)) for k in keys if hasattr(stats, k)}
