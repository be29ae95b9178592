"""Which parameters learn: LoRA adapters, parameter groups, and the labels the optimizer uses.

Every parameter of `VLA` belongs to one group, read from its path in the params tree:

  lora         the low-rank adapters (`VLAConfig.lora_rank` > 0), any path with "lora"
  trunk        the trunk's transformer blocks and final norm
  embeddings   text, position, proprio and query embeddings
  encoder      the image patch embedding and the ViT, if any
  action_head  the action logits head and its ordinal prior
  value_head   the critic

`VLAConfig.trainable` names the groups that learn ("all", or groups separated by commas;
"auto": all without adapters, "lora,action_head,value_head" with them). The optimizer steps
only those (`labels`: "train" / "frozen" per parameter, for `optax.multi_transform`), so its
state exists for them alone, and the rest keep their values bit for bit.
"""

from typing import Any, Optional, Sequence

import jax

GROUPS = ("lora", "trunk", "embeddings", "encoder", "action_head", "value_head")
LORA_DEFAULT = ("lora", "action_head", "value_head")
_TRUNK = ("blocks", "final_norm")
_ENCODER = ("patch_embed", "image_pos", "vit_blocks", "vit_norm", "vit_proj")
_HEADS = {"action_head": "action_head", "action_prior": "action_head",
          "value_head": "value_head"}


def parse(spec: str, lora_rank: int) -> tuple[str, ...]:
  """The groups `spec` trains (see the module docstring).

  Raises:
    ValueError: an unknown group, nothing to train, or "lora" without adapters.
  """
  spec = spec.strip()
  if spec == "auto":
    return LORA_DEFAULT if lora_rank else GROUPS[1:]
  if spec == "all":
    return GROUPS if lora_rank else GROUPS[1:]
  groups = tuple(g.strip() for g in spec.split(",") if g.strip())
  unknown = [g for g in groups if g not in GROUPS]
  if unknown or not groups:
    raise ValueError(f"trainable={spec!r}: unknown group {unknown[0] if unknown else '(none)'}; "
                     f"allowed: all, auto, or groups separated by commas among "
                     f"{', '.join(GROUPS)}")
  if "lora" in groups and not lora_rank:
    raise ValueError(f"trainable={spec!r} names lora but lora_rank is 0; allowed: lora_rank "
                     "> 0, or groups without lora")
  return groups


def partial(config) -> Optional[tuple[str, ...]]:
  """The groups a `VLAConfig` trains, or None when that is every parameter it has (full
  fine-tuning: the optimizer then covers the whole tree, as it always has)."""
  groups = parse(config.trainable, config.lora_rank)
  present = set(GROUPS) if config.lora_rank else set(GROUPS) - {"lora"}
  return None if present <= set(groups) else groups


def _key(entry) -> str:
  return str(getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry))))


def group_of(path: Sequence[Any]) -> str:
  """The group of the parameter at `path` (`jax.tree_util` keys, or plain names)."""
  names = [_key(k) for k in path]
  if any("lora" in n for n in names):
    return "lora"
  top = names[0] if names else ""
  if top in _TRUNK:
    return "trunk"
  if top in _ENCODER:
    return "encoder"
  if top in _HEADS:
    return _HEADS[top]
  return "embeddings"


def labels(params: Any, groups: Sequence[str]) -> Any:
  """"train" or "frozen" per leaf of `params` (the tree `optax.multi_transform` takes)."""
  groups = set(groups)
  return jax.tree_util.tree_map_with_path(
      lambda path, _: "train" if group_of(path) in groups else "frozen", params)


def split(params: Any, groups: Sequence[str]) -> tuple[Any, Any]:
  """(trained, frozen): two trees shaped like `params`, each holding its own leaves and None
  in place of the other's (None is an empty subtree: tree maps skip it)."""
  marks = labels(params, groups)
  trained = jax.tree.map(lambda m, x: x if m == "train" else None, marks, params)
  frozen = jax.tree.map(lambda m, x: None if m == "train" else x, marks, params)
  return trained, frozen


def merge(trained: Any, frozen: Any) -> Any:
  """The whole tree from `split`'s halves (references only: nothing is copied)."""
  return jax.tree.map(lambda t, f: f if t is None else t, trained, frozen,
                      is_leaf=lambda x: x is None)



def merge_adapters(params: Any) -> dict:
  """The params of the same model without adapters (`lora_rank` 0): each adapted projection's
  weight becomes W + A B, and the adapters are dropped. For export: inference and evaluation
  of a LoRA run on the base architecture.

  Args:
    params: a model's params (an `nnx.State` or its pure dict).

  Returns:
    A pure nested dict of arrays (load it with `nnx.State.replace_by_pure_dict` into the
    state of a model built with `lora_rank=0`).
  """
  tree = params.to_pure_dict() if hasattr(params, "to_pure_dict") else params
  return _merge_node(tree)


# Adapter pairs: (A name, B name, the weight they adapt, how A and B contract).
_PAIRS = (("lora_a", "lora_b", "kernel", "dr,ro->do"),
          ("qkv_lora_a", "qkv_lora_b", "qkv", "dr,rshk->dshk"),
          ("out_lora_a", "out_lora_b", "out", "hkr,rd->hkd"))


def _merge_node(node: Any) -> Any:
  if not isinstance(node, dict):
    return node
  out = {k: _merge_node(v) for k, v in node.items() if "lora" not in str(k)}
  for a, b, weight, contraction in _PAIRS:
    if a in node:
      delta = jax.numpy.einsum(contraction, node[a], node[b])
      out[weight] = (out[weight] + delta).astype(out[weight].dtype)
  return out
