"""Trajectory and learner-batch containers for RL.

Shapes use these letters: T rollout length, B envs in a group, N = T * B samples in a
learner batch, H action-chunk horizon, D action dims. Every action dim is one token out
of 256 bins, so log-probs and entropies are per token, [..., H, D], while values,
rewards and advantages are per chunk (one per env step).
"""

from typing import Any, Mapping, Optional

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class Transition:
  """One env step (or a stack of them) as recorded by the inference lane.

  In a rollout slot every leaf is time-major, `[T, B, ...]`; a single step has
  leading shape `[B]`. The value of the next state is deliberately not stored: GAE
  reads it from the following step's `value` (or the bootstrap value after the last
  step), which keeps a rollout slot one array per field.

  Attributes:
    obs: dict of observation arrays, each `[..., *feature_shape]`.
    tokens: int32 `[..., H, D]` sampled action-bin tokens.
    log_probs: float32 `[..., H, D]` log-probs of `tokens` under the behaviour
      policy (the weights that acted).
    value: float32 `[...]` critic value of `obs` (zeros when there is no critic).
    reward: float32 `[...]` reward received after executing the chunk.
    done: bool `[...]` the episode ended at this step, by termination OR truncation.
    truncated: bool `[...]` the episode ended by the time limit; the return must be
      bootstrapped (see `gae`). Implies `done`.
    version: int32 `[...]` policy version whose weights produced `tokens`.
  """

  obs: Mapping[str, jax.Array]
  tokens: jax.Array
  log_probs: jax.Array
  value: jax.Array
  reward: jax.Array
  done: jax.Array
  truncated: jax.Array
  version: jax.Array


@flax.struct.dataclass
class PPOBatch:
  """Flat batch of N samples that the PPO / GRPO losses consume.

  Built from a rollout with `make_ppo_batch`; minibatches are `jax.tree.map` slices
  of it (`None` fields are empty subtrees, so they slice for free).

  Attributes:
    obs: dict of observation arrays, each `[N, ...]`.
    tokens: int32 `[N, H, D]` action tokens the new policy is scored on.
    log_probs: float32 `[N, H, D]` behaviour-policy log-probs (from the rollout).
    advantages: float32 `[N]` chunk advantages (GAE for PPO, group-normalised outcome
      rewards for GRPO).
    version: int32 `[N]` policy version that acted; staleness is
      `learner_version - version`.
    value: float32 `[N]` value predicted at rollout time (for value clipping), or
      None for critic-free GRPO.
    returns: float32 `[N]` value targets, or None for GRPO.
    prox_log_probs: float32 `[N, H, D]` log-probs under the proximal policy
      (decoupled PPO: the learner's weights at the start of this update), or None
      to use the behaviour policy as the PPO anchor.
  """

  obs: Mapping[str, jax.Array]
  tokens: jax.Array
  log_probs: jax.Array
  advantages: jax.Array
  version: jax.Array
  value: Optional[jax.Array] = None
  returns: Optional[jax.Array] = None
  prox_log_probs: Optional[jax.Array] = None

  @property
  def size(self) -> int:
    """Number of samples N."""
    return self.advantages.shape[0]


def _flatten_time_batch(x: Any) -> Any:
  """Merges the two leading (time, batch) axes of every leaf of `x`."""
  return jax.tree.map(lambda a: jnp.reshape(a, (-1,) + a.shape[2:]), x)


def make_ppo_batch(
    rollout: Transition,
    advantages: jax.Array,
    returns: Optional[jax.Array] = None,
    prox_log_probs: Optional[jax.Array] = None,
) -> PPOBatch:
  """Flattens a time-major rollout and its advantages into a learner batch.

  Args:
    rollout: `Transition` with leaves `[T, B, ...]`.
    advantages: `[T, B]` (from `gae`) or already flat `[T * B]`.
    returns: `[T, B]` or `[T * B]` value targets; None for GRPO.
    prox_log_probs: optional `[T, B, H, D]` or `[T * B, H, D]` proximal log-probs.

  Returns:
    A `PPOBatch` with N = T * B samples, row `t * B + b` holding step t of env b.
  """
  t, b = rollout.reward.shape[:2]
  n = t * b

  def flat(x, trailing_rank):
    if x is None:
      return None
    x = jnp.asarray(x)
    if x.ndim == trailing_rank + 2:
      x = _flatten_time_batch(x)
    if x.shape[0] != n:
      raise ValueError(f"expected leading dim {n} (= T*B = {t}*{b}), got shape {x.shape}")
    return x

  return PPOBatch(
      obs=_flatten_time_batch(rollout.obs),
      tokens=_flatten_time_batch(rollout.tokens),
      log_probs=_flatten_time_batch(rollout.log_probs),
      advantages=flat(advantages, 0),
      version=_flatten_time_batch(rollout.version),
      value=_flatten_time_batch(rollout.value),
      returns=flat(returns, 0),
      prox_log_probs=flat(prox_log_probs, 2),
  )
