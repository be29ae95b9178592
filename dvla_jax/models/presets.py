"""Model configuration (`VLAConfig`) and named size presets.

A preset is a `VLAConfig`; `get_preset("small", action_horizon=4)` returns it with fields
replaced. The large presets land within 5% of their nominal parameter counts
(`python -m dvla_jax.models --list` prints the exact numbers); `1t` exists for the memory
planner, which only ever traces it abstractly.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dvla_jax.models import action_tokens
from dvla_jax.models import tokenizer
from dvla_jax.models import trainable as trainable_lib

_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class VLAConfig:
  """Shape and numerics of a VLA policy.

  Attributes:
    image_size: square camera resolution S in pixels; a multiple of `patch_size`.
    num_cameras: cameras per observation.
    patch_size: ViT patch side in pixels.
    width: trunk model width.
    depth: trunk transformer blocks.
    num_heads: trunk attention heads (divides `width`).
    mlp_dim: trunk MLP hidden size.
    max_text_len: longest instruction in tokens (bos and eos included).
    vocab_size: instruction vocabulary size (the byte tokenizer's).
    proprio_dim: proprioceptive state size P.
    action_horizon: H, steps per action chunk.
    action_dim: D, action dimensions per step.
    num_bins: tokens per action dimension.
    dtype: compute dtype, "float32" or "bfloat16"; logits and values are always float32.
    param_dtype: parameter storage dtype.
    remat: rematerialise trunk blocks in the backward pass (saves activation memory).
    action_prior_std: initial width (in normalised action units, [-1, 1]) of the ordinal prior
      added to the action logits: each action token's logits are free logits plus
      -(c_k - mu)^2 / (2 sigma^2) over the bin centres c_k, with mu and log sigma predicted per
      token. It gives the 256 bins an order, so policy gradients move probability to
      neighbouring bins instead of one bin at a time. 0 disables it (free logits only).
    action_free_logits: add free per-bin logits (a linear head, num_bins per token) to the
      prior. False makes each token a discretised Gaussian over the bins (mean and width
      predicted per token): two numbers to fit per token instead of 256, so cloning a few
      demonstrations cannot make single-bin spikes, and RL moves a mean rather than bins.
      Needs action_prior_std > 0.
    action_prior_min_std: floor of the prior's sigma (normalised units; one bin is
      2 / num_bins): cloning onto labels that sit in one bin would otherwise shrink the prior
      to a fraction of a bin and leave RL nothing to explore there.
    vit_width: image encoder width (used when `vit_depth` > 0).
    vit_depth: image encoder blocks; 0 embeds patches straight into the trunk.
    vit_num_heads: image encoder attention heads.
    vit_mlp_dim: image encoder MLP hidden size.
    lora_rank: r of the low-rank adapters (LoRA) added beside the trunk's attention (qkv and
      output) and MLP projections, W x + B (A x) with B zero at init (so the adapted model
      starts as the base model); 0 = none.
    trainable: which parameter groups learn (`models.trainable`): "all", or groups separated
      by commas among lora, trunk, embeddings, encoder, action_head, value_head; "auto" is
      "all" without adapters and "lora,action_head,value_head" with them.
  """

  image_size: int = 32
  num_cameras: int = 1
  patch_size: int = 8
  width: int = 32
  depth: int = 1
  num_heads: int = 2
  mlp_dim: int = 64
  max_text_len: int = 32
  vocab_size: int = tokenizer.VOCAB_SIZE
  proprio_dim: int = 8
  action_horizon: int = 2
  action_dim: int = 3
  num_bins: int = action_tokens.NUM_BINS
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: bool = False
  action_prior_std: float = 0.5
  action_prior_min_std: float = 0.02
  action_free_logits: bool = True
  vit_width: int = 0
  vit_depth: int = 0
  vit_num_heads: int = 1
  vit_mlp_dim: int = 0
  lora_rank: int = 0
  trainable: str = "auto"

  def __post_init__(self):
    positive = ("image_size", "num_cameras", "patch_size", "width", "depth", "num_heads",
                "mlp_dim", "vocab_size", "proprio_dim", "action_horizon", "action_dim")
    for name in positive:
      if getattr(self, name) < 1:
        raise ValueError(f"VLAConfig.{name} must be >= 1, got {getattr(self, name)}")
    if self.max_text_len < 2:
      raise ValueError(f"VLAConfig.max_text_len must be >= 2, got {self.max_text_len}")
    if self.action_prior_std < 0:
      raise ValueError(f"VLAConfig.action_prior_std must be >= 0, got {self.action_prior_std}")
    if not self.action_free_logits and self.action_prior_std <= 0:
      raise ValueError("VLAConfig.action_free_logits=False needs action_prior_std > 0")
    if self.action_prior_std and not 0 < self.action_prior_min_std <= self.action_prior_std:
      raise ValueError("VLAConfig.action_prior_min_std must be in (0, action_prior_std], got "
                       f"{self.action_prior_min_std}")
    if self.num_bins < 2:
      raise ValueError(f"VLAConfig.num_bins must be >= 2, got {self.num_bins}")
    if self.image_size % self.patch_size:
      raise ValueError(f"VLAConfig.image_size ({self.image_size}) must be a multiple of "
                       f"patch_size ({self.patch_size})")
    if self.width % self.num_heads:
      raise ValueError(f"VLAConfig.num_heads ({self.num_heads}) must divide width ({self.width})")
    if self.vit_depth < 0:
      raise ValueError(f"VLAConfig.vit_depth must be >= 0, got {self.vit_depth}")
    if self.vit_depth and (self.vit_width < 1 or self.vit_mlp_dim < 1
                           or self.vit_width % max(self.vit_num_heads, 1)
                           or self.vit_num_heads < 1):
      raise ValueError("VLAConfig.vit_width/vit_num_heads/vit_mlp_dim must be >= 1 with "
                       "vit_num_heads dividing vit_width when vit_depth > 0")
    if self.lora_rank < 0:
      raise ValueError(f"VLAConfig.lora_rank must be >= 0, got {self.lora_rank}")
    try:
      trainable_lib.parse(self.trainable, self.lora_rank)
    except ValueError as e:
      raise ValueError(f"VLAConfig.{e}") from None
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in _DTYPES:
        raise ValueError(f"VLAConfig.{name} must be one of {_DTYPES}, got {getattr(self, name)!r}")

  @property
  def patches_per_camera(self) -> int:
    return (self.image_size // self.patch_size) ** 2

  @property
  def num_action_tokens(self) -> int:
    """H * D action query tokens."""
    return self.action_horizon * self.action_dim

  @property
  def prefix_len(self) -> int:
    """Image patches + text + one proprio token."""
    return self.num_cameras * self.patches_per_camera + self.max_text_len + 1

  @property
  def seq_len(self) -> int:
    """Trunk sequence length: prefix, action queries, one value query."""
    return self.prefix_len + self.num_action_tokens + 1

  def replace(self, **overrides: Any) -> "VLAConfig":
    """Returns a copy with fields replaced (and validated); unknown fields raise ValueError."""
    unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
    if unknown:
      raise ValueError(f"unknown VLAConfig field(s): {', '.join(sorted(unknown))}")
    return dataclasses.replace(self, **overrides)

  def fake_obs(self, batch: int, seed: int = 0) -> dict[str, jax.Array]:
    """Builds a valid random observation batch.

    Drawn with numpy so that building one compiles nothing.

    Args:
      batch: batch size B.
      seed: random seed.

    Returns:
      {"image": uint8 [B, num_cameras, S, S, 3], "text": int32 [B, max_text_len] (bos, random
      bytes of random length, eos, padding), "proprio": float32 [B, proprio_dim]}.
    """
    rs = np.random.default_rng(seed)
    s = self.image_size
    image = rs.integers(0, 256, (batch, self.num_cameras, s, s, 3), dtype=np.uint8)
    # Byte lengths leave room for bos and eos.
    lengths = rs.integers(1, self.max_text_len - 1, (batch, 1))
    pos = np.arange(self.max_text_len)[None, :]
    body = rs.integers(tokenizer.BYTE_OFFSET, self.vocab_size, (batch, self.max_text_len))
    text = np.where(pos <= lengths, body, tokenizer.PAD_ID)
    text = np.where(pos == lengths + 1, tokenizer.EOS_ID, text)
    text[:, 0] = tokenizer.BOS_ID
    proprio = rs.standard_normal((batch, self.proprio_dim), dtype=np.float32)
    return {"image": jnp.asarray(image), "text": jnp.asarray(text, jnp.int32),
            "proprio": jnp.asarray(proprio)}


# Big presets: a ViT image encoder (ViT-B / ViT-L / SigLIP-so400m sized) plus a trunk sized so
# the total lands near the nominal count. 224 px with 16 px patches keeps image_size overrides
# of 32..128 divisible.
_BIG_IMAGE = dict(image_size=224, patch_size=16)

PRESETS: dict[str, VLAConfig] = {
    "tiny": VLAConfig(width=32, depth=1, num_heads=2, mlp_dim=64),
    "small": VLAConfig(width=64, depth=2, num_heads=4, mlp_dim=256),
    "base": VLAConfig(**_BIG_IMAGE, width=1024, depth=17, num_heads=16, mlp_dim=4096,
                      vit_width=768, vit_depth=12, vit_num_heads=12, vit_mlp_dim=3072),
    "1b": VLAConfig(**_BIG_IMAGE, width=2048, depth=14, num_heads=16, mlp_dim=8192,
                    vit_width=1024, vit_depth=24, vit_num_heads=16, vit_mlp_dim=4096),
    "7b": VLAConfig(**_BIG_IMAGE, width=4096, depth=33, num_heads=32, mlp_dim=16384,
                    vit_width=1152, vit_depth=27, vit_num_heads=16, vit_mlp_dim=4304),
    # For planning only (`tools/plan_memory.py`): a 1T trunk is never allocated here. 192 heads
    # of 128, a trunk width of 3 * 2^13 and a ViT width of 2^11 split over tensor axes up to 64
    # and fsdp axes up to 2048.
    "1t": VLAConfig(**_BIG_IMAGE, width=24576, depth=138, num_heads=192, mlp_dim=98304,
                    vit_width=2048, vit_depth=24, vit_num_heads=16, vit_mlp_dim=8192),
}

# Nominal total parameter counts the large presets are sized for.
NOMINAL_PARAMS: dict[str, float] = {"base": 3.0e8, "1b": 1.0e9, "7b": 7.0e9, "1t": 1.0e12}


def get_preset(name: str, **overrides: Any) -> VLAConfig:
  """Returns the named preset with `overrides` applied.

  Args:
    name: one of `PRESETS`.
    **overrides: `VLAConfig` fields to replace.

  Returns:
    The config.

  Raises:
    ValueError: unknown preset name or invalid field value.
  """
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; allowed: {', '.join(PRESETS)}")
  return PRESETS[name].replace(**overrides)
