"""GAE and GRPO advantages against hand-computed numbers and a plain-Python loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dvla_jax import rl

GAMMA, LAM = 0.9, 0.8
REWARDS = [1.0, 0.0, 2.0]
VALUES = [0.5, 1.0, 1.5]
BOOTSTRAP = 2.0


def _column(xs, dtype=jnp.float32):
  return jnp.asarray(xs, dtype)[:, None]  # [T=3, B=1]


def _gae_t3(done=(False, False, False), truncated=(False, False, False), **kwargs):
  adv, ret = rl.gae(
      _column(REWARDS),
      _column(VALUES),
      _column(done, bool),
      _column(truncated, bool),
      jnp.asarray([BOOTSTRAP]),
      GAMMA,
      LAM,
      **kwargs,
  )
  return np.asarray(adv[:, 0]), np.asarray(ret[:, 0])


def test_gae_hand_computed_no_episode_end():
  # deltas: 1 + .9*1 - .5 = 1.4 ; 0 + .9*1.5 - 1 = .35 ; 2 + .9*2 - 1.5 = 2.3
  # A2 = 2.3 ; A1 = .35 + .72*2.3 = 2.006 ; A0 = 1.4 + .72*2.006 = 2.84432
  adv, ret = _gae_t3()
  np.testing.assert_allclose(adv, [2.84432, 2.006, 2.3], rtol=1e-5)
  np.testing.assert_allclose(ret, [3.34432, 3.006, 3.8], rtol=1e-5)


def test_gae_hand_computed_terminal():
  # Terminal at t=1: delta1 = 0 - 1 = -1, nothing flows back from t=2 into t=1.
  # A0 = 1.4 + .72*(-1) = 0.68
  adv, ret = _gae_t3(done=(False, True, False))
  np.testing.assert_allclose(adv, [0.68, -1.0, 2.3], rtol=1e-5)
  np.testing.assert_allclose(ret, [1.18, 0.0, 3.8], rtol=1e-5, atol=1e-6)


def test_gae_hand_computed_truncation_with_final_value():
  # Truncated at t=1, final observation worth 3: delta1 = .9*3 - 1 = 1.7 (not .9*1.5 - 1).
  # A0 = 1.4 + .72*1.7 = 2.624
  adv, ret = _gae_t3(
      done=(False, True, False),
      truncated=(False, True, False),
      truncation_values=_column([99.0, 3.0, 99.0]),  # off-truncation entries unused
  )
  np.testing.assert_allclose(adv, [2.624, 1.7, 2.3], rtol=1e-5)
  np.testing.assert_allclose(ret, [3.124, 2.7, 3.8], rtol=1e-5)


def test_gae_truncation_without_final_value_uses_own_value():
  # Fallback bootstraps from values[1] = 1: delta1 = .9*1 - 1 = -.1 ; A0 = 1.4 - .072
  adv, _ = _gae_t3(done=(False, True, False), truncated=(False, True, False))
  np.testing.assert_allclose(adv, [1.328, -0.1, 2.3], rtol=1e-5)


def test_gae_terminal_at_last_step_ignores_bootstrap():
  # delta2 = 2 - 1.5 = .5 ; A1 = .35 + .72*.5 = .71 ; A0 = 1.4 + .72*.71 = 1.9112
  adv, _ = _gae_t3(done=(False, False, True))
  np.testing.assert_allclose(adv, [1.9112, 0.71, 0.5], rtol=1e-5)


def _reference_gae(r, v, done, trunc, boot, gamma, lam, trunc_v=None, next_v=None):
  t_len, b_len = r.shape
  adv = np.zeros_like(r)
  for b in range(b_len):
    running = 0.0
    for t in reversed(range(t_len)):
      if next_v is not None:
        nxt = next_v[t, b]
      elif trunc[t, b]:
        nxt = v[t, b] if trunc_v is None else trunc_v[t, b]
      else:
        nxt = boot[b] if t == t_len - 1 else v[t + 1, b]
      ended = done[t, b] or trunc[t, b]
      terminal = ended and not trunc[t, b]
      delta = r[t, b] + (0.0 if terminal else gamma * nxt) - v[t, b]
      running = delta + (0.0 if ended else gamma * lam * running)
      adv[t, b] = running
  return adv


@pytest.mark.parametrize("variant", ["plain", "truncation_values", "next_values"])
def test_gae_matches_python_loop_on_random_inputs(variant):
  rng = np.random.default_rng(0)
  t_len, b_len = 7, 4
  r = rng.normal(size=(t_len, b_len)).astype(np.float32)
  v = rng.normal(size=(t_len, b_len)).astype(np.float32)
  done = rng.random((t_len, b_len)) < 0.3
  trunc = done & (rng.random((t_len, b_len)) < 0.5)
  assert trunc.any() and (done & ~trunc).any()  # both kinds of episode end occur
  boot = rng.normal(size=(b_len,)).astype(np.float32)
  extra = rng.normal(size=(t_len, b_len)).astype(np.float32)
  kwargs = {}
  if variant == "truncation_values":
    kwargs["truncation_values"] = extra
  elif variant == "next_values":
    kwargs["next_values"] = extra

  adv, ret = jax.jit(rl.gae, static_argnums=(5, 6))(r, v, done, trunc, boot, 0.97, 0.9, **kwargs)
  want = _reference_gae(
      r, v, done, trunc, boot, 0.97, 0.9,
      trunc_v=kwargs.get("truncation_values"), next_v=kwargs.get("next_values"),
  )
  np.testing.assert_allclose(adv, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ret, want + v, rtol=1e-5, atol=1e-5)


def test_gae_rejects_both_value_overrides():
  z = jnp.zeros((2, 1))
  with pytest.raises(ValueError, match="not both"):
    rl.gae(z, z, z > 0, z > 0, jnp.zeros(1), 0.9, 0.9, next_values=z, truncation_values=z)


def test_grpo_advantages_normalised_per_group():
  rewards = jnp.asarray([0.0, 1.0, 1.0, 0.0, 5.0, 5.0, 5.0, 5.0, 3.0, -1.0, 2.0, 0.0])
  adv = np.asarray(rl.grpo_advantages(rewards, group_size=4, eps=1e-6)).reshape(3, 4)
  np.testing.assert_allclose(adv.mean(axis=1), 0.0, atol=1e-6)
  np.testing.assert_allclose(adv[[0, 2]].std(axis=1), 1.0, rtol=1e-4)
  np.testing.assert_allclose(adv[1], 0.0)  # constant group: no signal, no NaN
  np.testing.assert_allclose(adv[0], [-1.0, 1.0, 1.0, -1.0], rtol=1e-4)  # mean .5, std .5
  # Each group is ranked by its own rewards only.
  assert adv[2].argmax() == 0 and adv[2].argmin() == 1


def test_grpo_advantages_rejects_ragged_groups():
  with pytest.raises(ValueError, match="multiple of group_size"):
    rl.grpo_advantages(jnp.zeros(5), group_size=2)
