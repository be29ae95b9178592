"""PPO / GRPO losses: hand-computed cases, clipping, gradients, decoupling, staleness."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dvla_jax import rl

LOG = math.log


def _batch(log_probs, advantages, value=None, returns=None, prox=None, version=None):
  log_probs = jnp.asarray(log_probs, jnp.float32)
  n = log_probs.shape[0]
  return rl.PPOBatch(
      obs={"state": jnp.zeros((n, 1))},
      tokens=jnp.zeros(log_probs.shape, jnp.int32),
      log_probs=log_probs,
      advantages=jnp.asarray(advantages, jnp.float32),
      version=jnp.zeros((n,), jnp.int32) if version is None else jnp.asarray(version),
      value=None if value is None else jnp.asarray(value, jnp.float32),
      returns=None if returns is None else jnp.asarray(returns, jnp.float32),
      prox_log_probs=None if prox is None else jnp.asarray(prox, jnp.float32),
  )


def _tokens(xs):
  return jnp.asarray(xs, jnp.float32).reshape(-1, 1, 1)  # [N, H=1, D=1]


# N=2, H=D=1: ratios 1.04 (inside clip 0.1) and 0.6 (clipped), advantages +2 and -1.
HAND = dict(
    new=_tokens([LOG(0.52), LOG(0.3)]),
    batch=_batch(
        _tokens([LOG(0.5), LOG(0.5)]), [2.0, -1.0], value=[0.0, 1.0], returns=[1.0, 0.0]
    ),
    new_values=jnp.asarray([0.5, 0.7]),
    entropy=_tokens([1.0, 2.0]),
)
HAND_KW = dict(clip_eps=0.1, value_clip_eps=0.2, vf_coef=0.5, ent_coef=0.01,
               normalize_advantages=False)


def test_ppo_loss_hand_computed():
  loss, m = rl.ppo_loss(HAND["new"], HAND["new_values"], HAND["entropy"], HAND["batch"],
                        **HAND_KW)
  # surrogate: min(1.04*2, 1.1*2) = 2.08 ; min(0.6*-1, 0.9*-1) = -0.9 -> loss -(2.08-0.9)/2
  np.testing.assert_allclose(m["learner/policy_loss"], -0.59, rtol=1e-5)
  # v=.5, old 0, R=1: max(.25, (.2-1)^2=.64) ; v=.7, old 1, R=0: max(.49, .8^2=.64)
  np.testing.assert_allclose(m["learner/value_loss"], 0.5 * 0.64, rtol=1e-5)
  np.testing.assert_allclose(m["learner/entropy"], 1.5, rtol=1e-6)
  np.testing.assert_allclose(loss, -0.59 + 0.5 * 0.32 - 0.01 * 1.5, rtol=1e-5)
  np.testing.assert_allclose(m["learner/loss"], loss)
  np.testing.assert_allclose(m["learner/clip_fraction"], 0.5)
  want_kl = ((0.04 - LOG(1.04)) + (-0.4 - LOG(0.6))) / 2  # k3: (r - 1) - log r
  np.testing.assert_allclose(m["learner/approx_kl"], want_kl, rtol=1e-4)
  assert "learner/behaviour_kl" not in m
  assert float(m["learner/stale_fraction"]) == 0.0
  assert all(jnp.shape(v) == () for v in m.values())
  assert all(k.startswith("learner/") for k in m)


def test_value_clipping_off_and_gradients():
  kw = dict(HAND_KW, value_clip_eps=0.0)
  _, m = rl.ppo_loss(HAND["new"], HAND["new_values"], HAND["entropy"], HAND["batch"], **kw)
  np.testing.assert_allclose(m["learner/value_loss"], 0.5 * (0.25 + 0.49) / 2, rtol=1e-5)

  def value_loss(v, batch):
    return rl.ppo_loss(HAND["new"], v, HAND["entropy"], batch, **HAND_KW)[1][
        "learner/value_loss"]

  # Sample 0 moved past the clip towards its target: the clipped term dominates and is
  # flat in v, so no gradient. Sample 1 moved away from its target: the unclipped term
  # dominates, gradient 0.5 * 2 * (v - R) / N.
  batch = _batch(_tokens([0.0, 0.0]), [0.0, 0.0], value=[0.0, 0.0], returns=[1.0, 1.0])
  g = jax.grad(value_loss)(jnp.asarray([0.5, -0.5]), batch)
  np.testing.assert_allclose(g, [0.0, (-0.5 - 1.0) / 2], atol=1e-6)


def test_policy_gradient_zero_for_tokens_clipped_on_the_right_side():
  # Per sample: (ratio, advantage). Clipping removes the gradient only when the ratio left
  # the trust region in the direction the advantage pushes it.
  cases = [(1.5, 1.0), (0.5, -1.0), (1.5, -1.0), (0.5, 1.0), (1.05, 1.0), (0.95, -2.0)]
  ratios = np.asarray([c[0] for c in cases], np.float32)
  adv = np.asarray([c[1] for c in cases], np.float32)
  old = _tokens(np.full(len(cases), LOG(0.25)))
  batch = _batch(old, adv, value=np.zeros(len(cases)), returns=np.zeros(len(cases)))
  zeros = jnp.zeros(len(cases))

  def loss_fn(new):
    return rl.ppo_loss(new, zeros, jnp.zeros_like(new), batch, clip_eps=0.2,
                       value_clip_eps=0.0, vf_coef=0.0, ent_coef=0.0,
                       normalize_advantages=False)[0]

  g = np.asarray(jax.grad(loss_fn)(old + _tokens(np.log(ratios)))).reshape(-1)
  want = -ratios * adv / len(cases)  # d/dlogp of -(r * A) / N
  want[:2] = 0.0
  np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-7)
  assert np.all(g[2:] != 0.0)


def test_advantage_broadcast_over_chunk_tokens_and_normalisation():
  # One chunk, H=2, D=3: every token sees the same (normalised) chunk advantage.
  rng = np.random.default_rng(1)
  n, h, d = 3, 2, 3
  old = rng.normal(size=(n, h, d)).astype(np.float32) - 2.0
  new = old + rng.normal(scale=0.3, size=(n, h, d)).astype(np.float32)
  adv = np.asarray([1.0, -0.5, 3.0], np.float32)
  batch = _batch(old, adv, value=np.zeros(n), returns=np.zeros(n))
  _, m = rl.ppo_loss(jnp.asarray(new), jnp.zeros(n), jnp.zeros((n, h, d)), batch,
                     clip_eps=0.2, value_clip_eps=0.0, vf_coef=0.0, ent_coef=0.0)
  a = (adv - adv.mean()) / (adv.std() + 1e-8)
  r = np.exp(new - old)
  surr = np.minimum(r * a[:, None, None], np.clip(r, 0.8, 1.2) * a[:, None, None])
  np.testing.assert_allclose(m["learner/policy_loss"], -surr.mean(), rtol=1e-5)
  np.testing.assert_allclose(m["learner/clip_fraction"], (np.abs(r - 1) > 0.2).mean())


def _decoupled_case():
  # Behaviour .2 / .4 ; proximal .4 / .2 -> weights exp(prox - behaviour) = 2 (cap 1.5), .5.
  # New .42 / .3 -> ratios against the proximal policy 1.05 (inside) and 1.5 (clipped).
  behaviour = _tokens([LOG(0.2), LOG(0.4)])
  prox = _tokens([LOG(0.4), LOG(0.2)])
  new = _tokens([LOG(0.42), LOG(0.3)])
  return behaviour, prox, new


@pytest.mark.parametrize("prox_in_batch", [False, True])
def test_decoupled_ppo_weights(prox_in_batch):
  behaviour, prox, new = _decoupled_case()
  batch = _batch(behaviour, [1.0, 1.0], value=[0.0, 0.0], returns=[0.0, 0.0],
                 prox=prox if prox_in_batch else None)
  kw = dict(clip_eps=0.2, value_clip_eps=0.0, vf_coef=0.0, ent_coef=0.0,
            normalize_advantages=False, behaviour_weight_cap=1.5,
            prox_log_probs=None if prox_in_batch else prox)

  def loss_fn(new_lp):
    return rl.ppo_loss(new_lp, jnp.zeros(2), jnp.zeros_like(new_lp), batch, **kw)

  (loss, m), g = jax.value_and_grad(loss_fn, has_aux=True)(new)
  np.testing.assert_allclose(loss, -(1.5 * 1.05 + 0.5 * 1.2) / 2, rtol=1e-5)
  # The weight scales the gradient but is itself constant; the clipped token has none.
  np.testing.assert_allclose(np.asarray(g).reshape(-1), [-1.5 * 1.05 / 2, 0.0], rtol=1e-5)
  want_bkl = ((2.0 - 1.0 - LOG(2.0)) + (0.5 - 1.0 - LOG(0.5))) / 2
  np.testing.assert_allclose(m["learner/behaviour_kl"], want_bkl, rtol=1e-5)
  np.testing.assert_allclose(m["learner/behaviour_weight"], (1.5 + 0.5) / 2, rtol=1e-6)
  np.testing.assert_allclose(m["learner/clip_fraction"], 0.5)

  # Plain PPO anchors on the behaviour policy instead: ratios 2.1 (clipped) and .75.
  plain, m_plain = rl.ppo_loss(new, jnp.zeros(2), jnp.zeros_like(new), _batch(
      behaviour, [1.0, 1.0], value=[0.0, 0.0], returns=[0.0, 0.0]),
      **dict(kw, prox_log_probs=None))
  np.testing.assert_allclose(plain, -(1.2 + 0.75) / 2, rtol=1e-5)
  assert "learner/behaviour_kl" not in m_plain


def test_stale_samples_are_masked_out():
  rng = np.random.default_rng(2)
  n, h, d = 3, 2, 2
  old = rng.normal(size=(n, h, d)).astype(np.float32) - 2.0
  new = jnp.asarray(old + rng.normal(scale=0.3, size=(n, h, d)).astype(np.float32))
  values = jnp.asarray(rng.normal(size=n).astype(np.float32))
  entropy = jnp.asarray(rng.random((n, h, d)).astype(np.float32))
  batch = _batch(old, rng.normal(size=n), value=rng.normal(size=n), returns=rng.normal(size=n),
                 version=[5, 2, 4])
  kw = dict(clip_eps=0.2, value_clip_eps=0.1, vf_coef=0.5, ent_coef=0.01)
  staleness = 5 - batch.version  # [0, 3, 1]

  def loss_fn(lp, v):
    return rl.ppo_loss(lp, v, entropy, batch, staleness=staleness, max_staleness=2, **kw)

  (loss, m), (g_lp, g_v) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(new, values)
  np.testing.assert_allclose(m["learner/stale_fraction"], 1 / 3, rtol=1e-6)
  assert np.all(np.asarray(g_lp[1]) == 0.0) and float(g_v[1]) == 0.0
  assert np.any(np.asarray(g_lp[0]) != 0.0) and float(g_v[0]) != 0.0

  # Same numbers as a batch that never held the stale sample (means, normalisation).
  keep = np.asarray([0, 2])
  fresh = jax.tree.map(lambda x: x[keep], batch)
  want, m_fresh = rl.ppo_loss(new[keep], values[keep], entropy[keep], fresh, **kw)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  for key in ("learner/policy_loss", "learner/value_loss", "learner/entropy",
              "learner/approx_kl", "learner/clip_fraction"):
    np.testing.assert_allclose(m[key], m_fresh[key], rtol=1e-5, err_msg=key)

  with pytest.raises(ValueError, match="staleness"):
    rl.ppo_loss(new, values, entropy, batch, max_staleness=2, **kw)


def test_ppo_loss_jits():
  f = jax.jit(functools.partial(rl.ppo_loss, **HAND_KW))
  loss, m = f(HAND["new"], HAND["new_values"], HAND["entropy"], HAND["batch"])
  np.testing.assert_allclose(loss, -0.445, rtol=1e-5)
  assert set(m) >= {"learner/policy_loss", "learner/value_loss", "learner/entropy",
                    "learner/approx_kl", "learner/clip_fraction", "learner/stale_fraction"}


def test_grpo_loss_is_policy_surrogate_plus_optional_kl():
  adv = rl.grpo_advantages(jnp.asarray([1.0, 0.0]), group_size=2)  # [1, -1]
  batch = _batch(HAND["batch"].log_probs, adv)  # no value / returns: critic-free
  loss, m = rl.grpo_loss(HAND["new"], HAND["entropy"], batch, clip_eps=0.1)
  # min(1.04*1, 1.1*1) = 1.04 ; min(.6*-1, .9*-1) = -.9  -> -(1.04 - .9)/2
  np.testing.assert_allclose(loss, -0.07, rtol=1e-4)
  assert "learner/value_loss" not in m and "learner/kl_ref" not in m

  ref = _tokens([LOG(0.5), LOG(0.6)])  # k3(ref - new): exp(d) - d - 1 per token
  d = np.asarray([LOG(0.5 / 0.52), LOG(0.6 / 0.3)])
  want_kl = np.mean(np.exp(d) - d - 1)
  loss_kl, m_kl = rl.grpo_loss(HAND["new"], HAND["entropy"], batch, clip_eps=0.1,
                               kl_coef=0.1, ref_log_probs=ref, ent_coef=0.01)
  np.testing.assert_allclose(m_kl["learner/kl_ref"], want_kl, rtol=1e-5)
  np.testing.assert_allclose(loss_kl, -0.07 + 0.1 * want_kl - 0.01 * 1.5, rtol=1e-4)
  with pytest.raises(ValueError, match="ref_log_probs"):
    rl.grpo_loss(HAND["new"], HAND["entropy"], batch, clip_eps=0.1, kl_coef=0.1)
  with pytest.raises(ValueError, match="returns"):
    rl.ppo_loss(HAND["new"], HAND["new_values"], HAND["entropy"], batch, **HAND_KW)


def test_make_ppo_batch_flattens_time_major_rollout():
  t, b, h, d = 3, 2, 2, 1
  step = jnp.arange(t * b, dtype=jnp.float32).reshape(t, b)
  rollout = rl.Transition(
      obs={"image": jnp.zeros((t, b, 4, 4, 3))},
      tokens=jnp.zeros((t, b, h, d), jnp.int32),
      log_probs=jnp.broadcast_to(step[..., None, None], (t, b, h, d)),
      value=step, reward=step, done=step > 3, truncated=step > 4,
      version=step.astype(jnp.int32),
  )
  batch = rl.make_ppo_batch(rollout, advantages=step * 2, returns=step * 3)
  assert batch.size == t * b and batch.obs["image"].shape == (t * b, 4, 4, 3)
  # Row t * B + b holds step t of env b.
  np.testing.assert_array_equal(batch.version, np.arange(t * b))
  np.testing.assert_array_equal(batch.log_probs[:, 0, 0], np.arange(t * b))
  np.testing.assert_array_equal(batch.advantages, 2 * np.arange(t * b))
  assert batch.prox_log_probs is None


def test_chunk_ratio_is_the_product_of_token_ratios_and_clips_the_chunk():
  """Every token inside the clip, but the chunk's joint ratio (1.15^6 = 2.3) far outside it:
  per-token clipping lets the chunk move; per-chunk clipping stops it."""
  n, h, d = 2, 2, 3
  old = jnp.full((n, h, d), LOG(0.2))
  new = old + LOG(1.15)
  batch = _batch(old, [1.0, 1.0], value=[0.0, 0.0], returns=[0.0, 0.0])
  kw = dict(clip_eps=0.2, value_clip_eps=0.0, vf_coef=0.0, ent_coef=0.0,
            normalize_advantages=False)

  def loss(lp, level):
    return rl.ppo_loss(lp, jnp.zeros(n), jnp.zeros_like(lp), batch, ratio_level=level, **kw)

  (tok, m_tok), g_tok = jax.value_and_grad(lambda lp: loss(lp, "token"), has_aux=True)(new)
  (chunk, m_chunk), g_chunk = jax.value_and_grad(lambda lp: loss(lp, "chunk"), has_aux=True)(new)
  np.testing.assert_allclose(tok, -1.15, rtol=1e-5)
  np.testing.assert_allclose(chunk, -1.2, rtol=1e-5)  # clipped at 1 + 0.2
  assert float(m_tok["learner/clip_fraction"]) == 0.0
  assert float(m_chunk["learner/clip_fraction"]) == 1.0
  np.testing.assert_allclose(m_chunk["learner/approx_kl"], 1.15**6 - 1 - 6 * LOG(1.15),
                             rtol=1e-4)
  assert np.all(np.asarray(g_tok) != 0) and np.all(np.asarray(g_chunk) == 0)
  # Per action (H ratios of D tokens each): 1.15^3 = 1.52, clipped too.
  np.testing.assert_allclose(loss(new, "action")[0], -1.2, rtol=1e-5)
  with pytest.raises(ValueError, match="ratio_level"):
    loss(new, "episode")


def test_clip_higher_is_asymmetric():
  old = _tokens([LOG(0.2), LOG(0.2)])
  new = _tokens([LOG(0.2 * 1.25), LOG(0.2 * 0.75)])  # ratios 1.25 and 0.75
  batch = _batch(old, [1.0, -1.0], value=[0.0, 0.0], returns=[0.0, 0.0])
  kw = dict(clip_eps=0.2, value_clip_eps=0.0, vf_coef=0.0, ent_coef=0.0,
            normalize_advantages=False)
  sym, _ = rl.ppo_loss(new, jnp.zeros(2), jnp.zeros_like(new), batch, **kw)
  hi, m = rl.ppo_loss(new, jnp.zeros(2), jnp.zeros_like(new), batch, clip_eps_high=0.28, **kw)
  # Symmetric: min(1.25, 1.2) = 1.2 ; min(-.75, -.8) = -.8. Clip-higher: 1.25 stays inside.
  np.testing.assert_allclose(sym, -(1.2 - 0.8) / 2, rtol=1e-5)
  np.testing.assert_allclose(hi, -(1.25 - 0.8) / 2, rtol=1e-5)
  np.testing.assert_allclose(m["learner/clip_fraction"], 0.5)


def test_sample_weight_drops_samples_and_policy_coef_silences_the_policy():
  rng = np.random.default_rng(3)
  n, h, d = 4, 2, 3
  old = rng.normal(size=(n, h, d)).astype(np.float32) - 2.0
  new = jnp.asarray(old + rng.normal(scale=0.1, size=(n, h, d)).astype(np.float32))
  adv = rng.normal(size=n).astype(np.float32)
  batch = _batch(old, adv)
  weight = jnp.asarray([1.0, 0.0, 1.0, 0.0])
  got, _ = rl.grpo_loss(new, jnp.zeros_like(new), batch, clip_eps=0.2, sample_weight=weight,
                        ratio_level="chunk")
  keep = np.asarray([0, 2])
  want, _ = rl.grpo_loss(new[keep], jnp.zeros((2, h, d)), jax.tree.map(lambda x: x[keep], batch),
                         clip_eps=0.2, ratio_level="chunk")
  np.testing.assert_allclose(got, want, rtol=1e-5)

  vbatch = _batch(old, adv, value=np.zeros(n), returns=np.ones(n))
  values = jnp.zeros(n)

  def ppo(lp, coef):
    return rl.ppo_loss(lp, values, jnp.zeros_like(lp), vbatch, clip_eps=0.2, value_clip_eps=0.0,
                       vf_coef=0.5, ent_coef=0.0, policy_coef=coef)[0]

  assert np.all(np.asarray(jax.grad(ppo)(new, 0.0)) == 0.0)
  assert np.any(np.asarray(jax.grad(ppo)(new, 1.0)) != 0.0)
  np.testing.assert_allclose(ppo(new, 0.0), 0.5 * 0.5, rtol=1e-6)  # the value loss alone
