"""Continuous actions <-> discrete tokens: uniform bins per action dimension."""

import jax
import jax.numpy as jnp
import numpy as np

# Tokens per action dimension: the one definition (the model's `VLAConfig.num_bins` default,
# the tokenizer's, and the demonstration files').
NUM_BINS = 256


class ActionTokenizer:
  """Uniform binning of each action dimension between `low` and `high`.

  Bin k of dimension d covers [low_d + k * w_d, low_d + (k + 1) * w_d) with
  w_d = (high_d - low_d) / num_bins; decoding returns bin centres, so the round-trip error of
  an in-range action is at most w_d / 2. Both directions are jittable.
  """

  def __init__(self, low, high, num_bins: int = NUM_BINS):
    """Creates the tokenizer.

    Args:
      low: lower action bounds, shape [D] (a scalar broadcasts).
      high: upper action bounds, shape [D]; every entry > `low`.
      num_bins: tokens per dimension (>= 2).
    """
    low = np.asarray(low, np.float32)
    high = np.asarray(high, np.float32)
    low, high = np.broadcast_arrays(low, high)
    if low.ndim != 1:
      raise ValueError(f"low/high must have shape [D], got {low.shape}")
    if not np.all(high > low):
      raise ValueError(f"every high must exceed low, got low={low} high={high}")
    if num_bins < 2:
      raise ValueError(f"num_bins must be >= 2, got {num_bins}")
    self.low = low
    self.high = high
    self.num_bins = int(num_bins)
    self.bin_width = (high - low) / num_bins

  @property
  def action_dim(self) -> int:
    return self.low.shape[0]

  def encode(self, actions: jax.Array) -> jax.Array:
    """Maps actions to bins; out-of-range values clip to the first/last bin.

    Args:
      actions: float [..., D].

    Returns:
      int32 [..., D] bins in [0, num_bins).
    """
    actions = jnp.asarray(actions, jnp.float32)
    bins = jnp.floor((actions - self.low) / self.bin_width)
    return jnp.clip(bins, 0, self.num_bins - 1).astype(jnp.int32)

  def decode(self, tokens: jax.Array) -> jax.Array:
    """Maps bins to their centres.

    Args:
      tokens: int [..., D] bins (clipped into range).

    Returns:
      float32 [..., D] actions.
    """
    tokens = jnp.clip(jnp.asarray(tokens), 0, self.num_bins - 1).astype(jnp.float32)
    return self.low + (tokens + 0.5) * self.bin_width
