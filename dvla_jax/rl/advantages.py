"""Advantage estimators: GAE for PPO with a critic, group normalisation for GRPO.

All functions are pure and jit-friendly; arrays are time-major `[T, B]`.
"""

from typing import Optional, Tuple

import jax
import jax.numpy as jnp


def _next_state_values(
    values: jax.Array,
    truncated: jax.Array,
    bootstrap_value: jax.Array,
    next_values: Optional[jax.Array],
    truncation_values: Optional[jax.Array],
) -> jax.Array:
  """Value of the state each step led to, before any auto-reset, `[T, B]`."""
  if next_values is not None:
    return next_values
  shifted = jnp.concatenate([values[1:], bootstrap_value[None]], axis=0)
  # After auto-reset, values[t + 1] belongs to the next episode's first state, so a
  # truncated step needs the value of the final observation instead. Without it the
  # value of the last acted-on state is the closest stand-in we have.
  at_truncation = values if truncation_values is None else truncation_values
  return jnp.where(truncated, at_truncation, shifted)


def gae(
    rewards: jax.Array,
    values: jax.Array,
    dones: jax.Array,
    truncated: jax.Array,
    bootstrap_value: jax.Array,
    gamma: float,
    lam: float,
    next_values: Optional[jax.Array] = None,
    truncation_values: Optional[jax.Array] = None,
) -> Tuple[jax.Array, jax.Array]:
  """Generalised advantage estimation over a time-major rollout with auto-reset.

  For step t with next-state value `v'_t`:
    delta_t = r_t + gamma * (1 - terminal_t) * v'_t - v_t
    A_t     = delta_t + gamma * lam * (1 - done_t) * A_{t+1}
  where `terminal = done & ~truncated`. The recursion never crosses an episode
  boundary (`done`), but only a true termination drops the bootstrap: an episode cut
  by the time limit bootstraps from the value of the state it was cut in.

  `v'_t` is chosen as follows:
    * `next_values` given: `next_values[t]` everywhere (the caller evaluated the
      critic on every pre-reset next observation); `bootstrap_value` and
      `truncation_values` are then unused.
    * otherwise `values[t + 1]` (or `bootstrap_value` for t = T - 1), except at
      truncated steps, where it is `truncation_values[t]`, the value of the final
      observation before auto-reset. If `truncation_values` is None, `values[t]` is
      used there, which is exact only when the last observation changes little.

  Args:
    rewards: float `[T, B]`.
    values: float `[T, B]` critic values of the observations acted on.
    dones: bool `[T, B]` episode ended at t (terminal or truncated).
    truncated: bool `[T, B]` episode ended at t by the time limit (bootstrap).
    bootstrap_value: float `[B]` value of the observation after the last step.
    gamma: discount.
    lam: GAE lambda.
    next_values: optional float `[T, B]` value of the state reached by each step.
    truncation_values: optional float `[T, B]` value of the final observation at
      truncated steps (other entries are ignored).

  Returns:
    `(advantages, returns)`, both float32 `[T, B]`, with `returns = advantages +
    values` (the value-function targets).
  """
  if next_values is not None and truncation_values is not None:
    raise ValueError("give next_values or truncation_values, not both")
  rewards = jnp.asarray(rewards, jnp.float32)
  values = jnp.asarray(values, jnp.float32)
  if rewards.ndim != 2 or rewards.shape != values.shape:
    raise ValueError(f"rewards {rewards.shape} and values {values.shape} must be equal [T, B]")
  truncated = jnp.asarray(truncated, bool)
  # A truncation ends the episode even if the env forgot to raise `done`.
  ended = jnp.asarray(dones, bool) | truncated
  terminal = ended & ~truncated
  v_next = _next_state_values(
      values,
      truncated,
      jnp.asarray(bootstrap_value, jnp.float32),
      None if next_values is None else jnp.asarray(next_values, jnp.float32),
      None if truncation_values is None else jnp.asarray(truncation_values, jnp.float32),
  )
  deltas = rewards + gamma * (1.0 - terminal.astype(jnp.float32)) * v_next - values
  carry_on = gamma * lam * (1.0 - ended.astype(jnp.float32))

  def step(next_advantage, xs):
    delta, decay = xs
    advantage = delta + decay * next_advantage
    return advantage, advantage

  _, advantages = jax.lax.scan(
      step, jnp.zeros_like(values[0]), (deltas, carry_on), reverse=True
  )
  return advantages, advantages + values


def grpo_advantages(
    outcome_rewards: jax.Array, group_size: int, eps: float = 1e-6
) -> jax.Array:
  """Group-normalised outcome advantages (GRPO).

  Consecutive blocks of `group_size` entries are episodes that share a task instance
  (same prompt / initial state); each reward is standardised within its group:
  `(r - mean_g) / (std_g + eps)`, with the population std. A group with equal rewards
  gets zero advantage, so it contributes no policy gradient.

  Args:
    outcome_rewards: float `[N]`, N a multiple of `group_size`.
    group_size: G, episodes per group.
    eps: added to the std so constant groups do not divide by zero.

  Returns:
    float32 `[N]` advantages.
  """
  r = jnp.asarray(outcome_rewards, jnp.float32)
  if r.ndim != 1 or group_size < 1 or r.shape[0] % group_size:
    raise ValueError(
        f"outcome_rewards must be [N] with N a multiple of group_size={group_size}, "
        f"got shape {r.shape}"
    )
  groups = r.reshape(-1, group_size)
  mean = groups.mean(axis=1, keepdims=True)
  std = groups.std(axis=1, keepdims=True)
  return ((groups - mean) / (std + eps)).reshape(-1)
