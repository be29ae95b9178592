"""PPO (decoupled, staleness-bounded) and GRPO losses over action-token chunks.

The policy emits action chunks of H x D tokens decoded in parallel. Log-probs are per token,
the advantage is per chunk. The ratio is taken per *ratio unit* (`ratio_level`): the whole
chunk (default in the configs, as RLinf-VLA does: the chunk's log-ratio is the sum of its
tokens'), each action of H, or each token. Per-token ratios let a chunk's joint ratio drift
far outside the clip while every token stays inside it; a chunk ratio clips what the env
actually executed. The clip may be asymmetric ("clip-higher": 1 - clip_eps .. 1 +
clip_eps_high), which leaves more room to raise the probability of rare good chunks.

Decoupled PPO (Hilton et al. 2021, "Batch size-invariance for policy optimization")
separates the two roles the old policy plays in PPO. The *proximal* policy (the
learner's weights when this update began) anchors the clipped trust region; the
*behaviour* policy (whatever, possibly stale, weights acted) is corrected for by an
importance weight `prox / behaviour` per ratio unit, truncated at `behaviour_weight_cap`
and held constant (stop-gradient). Samples more than `max_staleness` versions old are
masked out entirely: they get weight 0 in every term, and every mean (including the
advantage normalisation) runs over the remaining samples only, so dropping samples
changes which data the loss sees but not its scale.
"""

from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp

from dvla_jax.rl.types import PPOBatch

Metrics = Dict[str, jax.Array]


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of `x` over entries where `mask` (broadcast to `x`) is 1; 0 if none."""
  mask = jnp.broadcast_to(mask, x.shape).astype(jnp.float32)
  return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


RATIO_LEVELS = ("chunk", "action", "token")


def _per_token(x: jax.Array) -> jax.Array:
  """Broadcastable view of a per-sample `[N]` array against `[N, H, D]` tokens."""
  return x[:, None, None]


def _group(x: jax.Array, level: str) -> jax.Array:
  """Sums per-token log-quantities `[N, H, D]` into one per ratio unit.

  "chunk": `[N]` (the whole H x D chunk is one action of the policy), "action": `[N, H]` (one
  per control step), "token": `[N, H, D]` unchanged.
  """
  if level == "chunk":
    return jnp.sum(x, axis=(1, 2))
  if level == "action":
    return jnp.sum(x, axis=2)
  if level == "token":
    return x
  raise ValueError(f"ratio_level={level!r}; allowed: {', '.join(RATIO_LEVELS)}")


def _per_unit(x: jax.Array, unit_shape: tuple[int, ...]) -> jax.Array:
  """Broadcastable view of a per-sample `[N]` array against `unit_shape` (`[N, ...]`)."""
  return jnp.reshape(x, x.shape + (1,) * (len(unit_shape) - 1))


def _k3_kl(log_ratio: jax.Array) -> jax.Array:
  """Per-token estimate of KL(p || q) from `log(q / p)` at samples of p (Schulman's k3)."""
  return jnp.expm1(log_ratio) - log_ratio


def _sample_mask(
    n: int, staleness: Optional[jax.Array], max_staleness: Optional[int]
) -> Tuple[jax.Array, Metrics]:
  """Per-sample weight in {0, 1}: 0 for samples staler than `max_staleness`."""
  if max_staleness is None:
    metrics = {"learner/stale_fraction": jnp.zeros((), jnp.float32)}
    if staleness is not None:
      metrics["learner/staleness_mean"] = jnp.mean(jnp.asarray(staleness, jnp.float32))
    return jnp.ones((n,), jnp.float32), metrics
  if staleness is None:
    raise ValueError("max_staleness needs staleness (learner_version - batch.version)")
  staleness = jnp.asarray(staleness)
  fresh = (staleness <= max_staleness).astype(jnp.float32)
  return fresh, {
      "learner/stale_fraction": 1.0 - jnp.mean(fresh),
      "learner/staleness_mean": jnp.mean(staleness.astype(jnp.float32)),
  }


def _policy_surrogate(
    new_log_probs: jax.Array,
    batch: PPOBatch,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    clip_eps: float,
    clip_eps_high: Optional[float],
    ratio_level: str,
    prox_log_probs: Optional[jax.Array],
    behaviour_weight_cap: Optional[float],
) -> Tuple[jax.Array, Metrics]:
  """Clipped surrogate loss (to minimise) over ratio units, and its diagnostics."""
  new = jnp.asarray(new_log_probs, jnp.float32)
  behaviour = jnp.asarray(batch.log_probs, jnp.float32)
  if new.shape != behaviour.shape:
    raise ValueError(f"new_log_probs {new.shape} != behaviour log_probs {behaviour.shape}")
  metrics = {}
  if prox_log_probs is None:
    old = behaviour
    weights = None
  else:
    old = jax.lax.stop_gradient(jnp.asarray(prox_log_probs, jnp.float32))
    prox_over_behaviour = _group(old - behaviour, ratio_level)
    weights = jnp.exp(prox_over_behaviour)
    if behaviour_weight_cap is not None:
      weights = jnp.minimum(weights, behaviour_weight_cap)
    weights = jax.lax.stop_gradient(weights)

  log_ratio = _group(new - old, ratio_level)
  unit_mask = jnp.broadcast_to(_per_unit(mask, log_ratio.shape), log_ratio.shape)
  if weights is None:
    weights = jnp.ones_like(log_ratio)
  else:
    metrics["learner/behaviour_kl"] = _masked_mean(_k3_kl(prox_over_behaviour), unit_mask)
    metrics["learner/behaviour_weight"] = _masked_mean(weights, unit_mask)
  high = clip_eps if clip_eps_high is None else clip_eps_high
  ratio = jnp.exp(log_ratio)
  adv = _per_unit(advantages, log_ratio.shape)
  surrogate = jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - clip_eps, 1.0 + high) * adv)
  policy_loss = -_masked_mean(weights * surrogate, unit_mask)

  log_ratio = jax.lax.stop_gradient(log_ratio)
  ratio = jnp.exp(log_ratio)
  metrics["learner/policy_loss"] = policy_loss
  metrics["learner/approx_kl"] = _masked_mean(_k3_kl(log_ratio), unit_mask)
  # Share of ratio units that left the trust region, whatever the advantage sign.
  clipped = (ratio < 1.0 - clip_eps) | (ratio > 1.0 + high)
  metrics["learner/clip_fraction"] = _masked_mean(clipped, unit_mask)
  return policy_loss, metrics


def _normalise(advantages: jax.Array, mask: jax.Array) -> jax.Array:
  mean = _masked_mean(advantages, mask)
  std = jnp.sqrt(_masked_mean(jnp.square(advantages - mean), mask))
  return (advantages - mean) / (std + 1e-8)


def ppo_loss(
    new_log_probs: jax.Array,
    new_values: jax.Array,
    entropy: jax.Array,
    batch: PPOBatch,
    *,
    clip_eps: float,
    value_clip_eps: float,
    vf_coef: float,
    ent_coef: float,
    clip_eps_high: Optional[float] = None,
    ratio_level: str = "token",
    policy_coef: jax.Array | float = 1.0,
    sample_weight: Optional[jax.Array] = None,
    prox_log_probs: Optional[jax.Array] = None,
    behaviour_weight_cap: Optional[float] = None,
    staleness: Optional[jax.Array] = None,
    max_staleness: Optional[int] = None,
    normalize_advantages: bool = True,
) -> Tuple[jax.Array, Metrics]:
  """Clipped PPO loss with value clipping and an entropy bonus.

  `loss = policy_coef * policy_loss + vf_coef * value_loss - ent_coef * entropy`, where
    * policy_loss = -mean_units[w * min(r * A, clip(r, 1 - clip_eps, 1 + clip_eps_high) * A)],
      over ratio units (`ratio_level`: one per chunk, per action or per token), with
      log r = sum over the unit's tokens of (new - old), old = proximal log-probs if given
      else behaviour log-probs, w = stop_grad(min(exp(sum(prox - behaviour)),
      behaviour_weight_cap)) when proximal log-probs are given, else 1;
    * value_loss = mean_samples 0.5 * max((v - R)^2, (v_clip - R)^2), with
      v_clip = v_old + clip(v - v_old, +-value_clip_eps); unclipped if value_clip_eps <= 0;
    * entropy = mean token entropy.
  All means skip samples with `staleness > max_staleness` (see the module docstring).

  Args:
    new_log_probs: float `[N, H, D]` log-probs of `batch.tokens` under the current
      parameters (differentiated).
    new_values: float `[N]` current critic values (differentiated).
    entropy: float `[N, H, D]` per-token entropy of the current policy.
    batch: `PPOBatch` with `value` and `returns` set.
    clip_eps: ratio clip.
    value_clip_eps: value-update clip; <= 0 disables value clipping.
    vf_coef: value-loss weight.
    ent_coef: entropy-bonus weight.
    clip_eps_high: upper ratio clip ("clip-higher"); None = `clip_eps` (symmetric).
    ratio_level: "chunk", "action" or "token" (see `RATIO_LEVELS`).
    policy_coef: weight of the policy loss (0 during a critic warm-up; may be traced).
    sample_weight: optional float `[N]` in {0, 1} multiplying the staleness mask.
    prox_log_probs: float `[N, H, D]` proximal-policy log-probs; defaults to
      `batch.prox_log_probs`. None for plain PPO against the behaviour policy.
    behaviour_weight_cap: truncation of the prox/behaviour weight; None = no cap.
    staleness: int `[N]` learner version minus `batch.version`.
    max_staleness: samples staler than this get weight 0; None keeps all.
    normalize_advantages: standardise advantages over the (unmasked) batch.

  Returns:
    `(loss, metrics)`: scalar loss and a dict of scalar `learner/...` metrics.
  """
  if batch.value is None or batch.returns is None:
    raise ValueError("ppo_loss needs batch.value and batch.returns (built with a critic)")
  if prox_log_probs is None:
    prox_log_probs = batch.prox_log_probs
  mask, metrics = _sample_mask(batch.size, staleness, max_staleness)
  if sample_weight is not None:
    mask = mask * jnp.asarray(sample_weight, jnp.float32)
  advantages = jnp.asarray(batch.advantages, jnp.float32)
  if normalize_advantages:
    advantages = _normalise(advantages, mask)

  policy_loss, policy_metrics = _policy_surrogate(
      new_log_probs,
      batch,
      advantages,
      mask,
      clip_eps=clip_eps,
      clip_eps_high=clip_eps_high,
      ratio_level=ratio_level,
      prox_log_probs=prox_log_probs,
      behaviour_weight_cap=behaviour_weight_cap,
  )
  metrics.update(policy_metrics)

  v = jnp.asarray(new_values, jnp.float32)
  v_old = jnp.asarray(batch.value, jnp.float32)
  target = jnp.asarray(batch.returns, jnp.float32)
  if v.shape != target.shape:
    raise ValueError(f"new_values {v.shape} != returns {target.shape}")
  # jnp.where rather than a Python branch so value_clip_eps may also be a traced scalar.
  v_clipped = jnp.where(
      value_clip_eps > 0, v_old + jnp.clip(v - v_old, -value_clip_eps, value_clip_eps), v
  )
  value_loss = 0.5 * _masked_mean(
      jnp.maximum(jnp.square(v - target), jnp.square(v_clipped - target)), mask
  )

  mean_entropy = _masked_mean(jnp.asarray(entropy, jnp.float32), _per_token(mask))
  loss = policy_coef * (policy_loss - ent_coef * mean_entropy) + vf_coef * value_loss
  metrics.update({
      "learner/value_loss": value_loss,
      "learner/entropy": mean_entropy,
      "learner/loss": loss,
  })
  return loss, metrics


def grpo_loss(
    new_log_probs: jax.Array,
    entropy: jax.Array,
    batch: PPOBatch,
    *,
    clip_eps: float,
    clip_eps_high: Optional[float] = None,
    ratio_level: str = "token",
    sample_weight: Optional[jax.Array] = None,
    ent_coef: float = 0.0,
    kl_coef: float = 0.0,
    ref_log_probs: Optional[jax.Array] = None,
    prox_log_probs: Optional[jax.Array] = None,
    behaviour_weight_cap: Optional[float] = None,
    staleness: Optional[jax.Array] = None,
    max_staleness: Optional[int] = None,
) -> Tuple[jax.Array, Metrics]:
  """Critic-free GRPO loss: the PPO token surrogate on group-normalised advantages.

  `loss = policy_loss - ent_coef * entropy + kl_coef * KL(new || ref)`, with
  `policy_loss` exactly as in `ppo_loss` (decoupled weights and staleness mask
  included) but on `batch.advantages` as given (already normalised per group by
  `grpo_advantages`, so not re-normalised here). The KL to a frozen reference policy
  uses the per-token k3 estimator `exp(ref - new) - (ref - new) - 1` and is off by
  default.

  Args:
    new_log_probs: float `[N, H, D]` current log-probs of `batch.tokens`.
    entropy: float `[N, H, D]` per-token entropy of the current policy.
    batch: `PPOBatch`; `value` and `returns` are ignored.
    clip_eps: ratio clip (below 1).
    clip_eps_high: upper ratio clip; None = `clip_eps`.
    ratio_level: "chunk", "action" or "token" (see `RATIO_LEVELS`).
    sample_weight: optional float `[N]` in {0, 1}: 0 drops a sample from every mean (GRPO's
      dynamic sampling drops the groups whose outcomes were all equal).
    ent_coef: entropy-bonus weight.
    kl_coef: weight of the KL penalty to `ref_log_probs`.
    ref_log_probs: float `[N, H, D]` reference-policy log-probs; needed if kl_coef != 0.
    prox_log_probs: proximal log-probs; defaults to `batch.prox_log_probs`.
    behaviour_weight_cap: truncation of the prox/behaviour weight; None = no cap.
    staleness: int `[N]` learner version minus `batch.version`.
    max_staleness: samples staler than this get weight 0; None keeps all.

  Returns:
    `(loss, metrics)`: scalar loss and a dict of scalar `learner/...` metrics.
  """
  if prox_log_probs is None:
    prox_log_probs = batch.prox_log_probs
  mask, metrics = _sample_mask(batch.size, staleness, max_staleness)
  if sample_weight is not None:
    mask = mask * jnp.asarray(sample_weight, jnp.float32)
  policy_loss, policy_metrics = _policy_surrogate(
      new_log_probs,
      batch,
      jnp.asarray(batch.advantages, jnp.float32),
      mask,
      clip_eps=clip_eps,
      clip_eps_high=clip_eps_high,
      ratio_level=ratio_level,
      prox_log_probs=prox_log_probs,
      behaviour_weight_cap=behaviour_weight_cap,
  )
  metrics.update(policy_metrics)
  mean_entropy = _masked_mean(jnp.asarray(entropy, jnp.float32), _per_token(mask))
  loss = policy_loss - ent_coef * mean_entropy
  metrics["learner/entropy"] = mean_entropy

  if ref_log_probs is not None:
    ref = jax.lax.stop_gradient(jnp.asarray(ref_log_probs, jnp.float32))
    new = jnp.asarray(new_log_probs, jnp.float32)
    kl_ref = _masked_mean(_k3_kl(ref - new), _per_token(mask))
    loss = loss + kl_coef * kl_ref
    metrics["learner/kl_ref"] = kl_ref
  elif not isinstance(kl_coef, (int, float)) or kl_coef != 0:
    raise ValueError("kl_coef != 0 needs ref_log_probs")
  metrics["learner/loss"] = loss
  return loss, metrics
