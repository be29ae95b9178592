"""The learner update's off-policy machinery on fake rollouts (no env): decoupled PPO, the
staleness bound, skipped non-finite updates, GRPO, and rollout-slot writes."""

import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dvla_jax import models
from dvla_jax import rl
from dvla_jax.config import default_config
from dvla_jax.programs import builders
from dvla_jax.programs import rollout_metrics
from dvla_jax.programs import steps

T, B = 2, 4


def _rl_config(**overrides):
  cfg = default_config.get_config().rl
  cfg.update_epochs, cfg.num_minibatches = 1, 2
  cfg.max_staleness, cfg.group_size = 1, 2
  cfg.update(overrides)
  return cfg


@pytest.fixture(scope="module")
def setup():
  mcfg = models.get_preset("tiny", max_text_len=8, proprio_dim=6)
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: models.VLA(mcfg, rngs=nnx.Rngs(0))))
  optimizer = builders.make_optimizer(_rl_config())

  @jax.jit
  def init_and_score(obs, tokens):
    params = nnx.state(models.VLA(mcfg, rngs=nnx.Rngs(0)))
    flat = jax.tree.map(lambda x: x.reshape((T * B,) + x.shape[2:]), obs)
    logits, value = nnx.merge(graphdef, params)(flat)
    log_probs = models.token_log_probs(logits, tokens.reshape((T * B,) + tokens.shape[2:]))
    state = steps.TrainState(step=jnp.asarray(5, jnp.int32), params=params,
                             opt_state=optimizer.init(params))
    return state, log_probs.reshape(tokens.shape), value.reshape((T, B))

  obs = jax.tree.map(lambda x: x.reshape((T, B) + x.shape[1:]), mcfg.fake_obs(T * B))
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, mcfg.num_bins, (T, B, mcfg.action_horizon,
                                                       mcfg.action_dim)), jnp.int32)
  state, log_probs, value = init_and_score(obs, tokens)
  rollout = rl.Transition(
      obs=obs, tokens=tokens, log_probs=log_probs, value=value,
      reward=jnp.asarray(rng.normal(size=(T, B)), jnp.float32), done=jnp.zeros((T, B), bool),
      truncated=jnp.zeros((T, B), bool), version=jnp.full((T, B), 5, jnp.int32))

  def make_update(**overrides):
    return jax.jit(functools.partial(steps.update, graphdef, optimizer,
                                     rl_config=_rl_config(**overrides), decoupled=True))

  return state, rollout, make_update(), make_update


def _run(update, state, rollout):
  new, metrics = update(state, rollout, jnp.zeros((B,)), jax.random.key(1))
  return new, {k: float(v) for k, v in metrics.items()}


def _max_diff(a, b):
  return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a),
                                                            jax.tree.leaves(b)))


def test_on_policy_data_gives_no_behaviour_correction(setup):
  state, rollout, update, make_update = setup
  new, metrics = _run(update, state, rollout)
  assert metrics["learner/behaviour_kl"] == pytest.approx(0.0, abs=1e-6)
  assert metrics["learner/behaviour_weight"] == pytest.approx(1.0, abs=1e-5)
  assert metrics["learner/stale_fraction"] == 0.0 and metrics["learner/skipped"] == 0.0
  assert int(new.step) == 6 and _max_diff(new.params, state.params) > 0


def test_stale_samples_are_dropped_and_lag_is_measured(setup):
  state, rollout, update, _ = setup
  # Envs 0-1 acted 3 versions ago (beyond max_staleness=1) with different weights.
  version = rollout.version.at[:, :2].set(2)
  log_probs = rollout.log_probs.at[:, :2].add(-0.3)
  _, metrics = _run(update, state, rollout.replace(version=version, log_probs=log_probs))
  assert metrics["learner/stale_fraction"] == pytest.approx(0.5)
  assert metrics["learner/staleness_mean"] == pytest.approx(1.5)
  # The stale (perturbed) samples are masked out, so the behaviour KL stays ~0 ...
  assert metrics["learner/behaviour_kl"] == pytest.approx(0.0, abs=1e-6)
  # ... while fresh but off-policy samples show up in it.
  _, metrics = _run(update, state, rollout.replace(log_probs=log_probs))
  assert metrics["learner/behaviour_kl"] > 1e-3
  assert metrics["learner/behaviour_weight"] > 1.0


def test_non_finite_update_is_skipped_inside_the_jitted_update(setup):
  state, rollout, update, _ = setup
  new, metrics = _run(update, state, rollout.replace(reward=rollout.reward.at[0, 0].set(jnp.nan)))
  assert metrics["learner/skipped"] == 1.0
  assert int(new.step) == 6
  assert _max_diff(new.params, state.params) == 0.0
  assert _max_diff(new.opt_state, state.opt_state) == 0.0


def test_grpo_advantages_are_group_normalised_first_episode_successes():
  # Two groups of two envs; env 1 finishes its episode at t=0, so its t=1 step is not scored.
  reward = jnp.array([[0.0, 1.0, 0.0, 0.0], [1.0, 5.0, 0.0, 0.0]])
  done = jnp.array([[False, True, False, False], [False, False, False, False]])
  rollout = rl.Transition(obs={}, tokens=None, log_probs=None, value=None, reward=reward,
                          done=done, truncated=jnp.zeros_like(done), version=None)
  adv, weight, outcome, kept = steps._grpo_advantages(rollout, reward, 2)  # pylint: disable=protected-access
  # Binary outcomes; both groups are uniform (all succeeded, all failed): dynamic sampling
  # drops them.
  np.testing.assert_allclose(outcome, [1.0, 1.0, 0.0, 0.0])
  np.testing.assert_allclose(adv, 0.0, atol=1e-5)
  np.testing.assert_allclose(weight, 0.0)
  assert float(kept) == 0.0
  reward = reward.at[1, 3].set(1.0)  # Env 3 now succeeds where env 2 fails: a mixed group.
  adv, weight, outcome, kept = steps._grpo_advantages(rollout, reward, 2)  # pylint: disable=protected-access
  np.testing.assert_allclose(adv, [[0.0, 0.0, -1.0, 1.0], [0.0, 0.0, -1.0, 1.0]], atol=1e-4)
  np.testing.assert_allclose(weight, [[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
  assert float(kept) == 0.5


def test_episodic_rollout_success_counts_first_episodes():
  # Env 0 succeeds fast twice (t=0 and t=2), env 1 fails at the time limit (t=3): every
  # finished episode gives 2/3; each env's first episode, what the learner sees, 1/2.
  done = jnp.array([[True, False], [False, False], [True, False], [False, True]])
  success = jnp.array([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
  rollout = rl.Transition(obs={}, tokens=None, log_probs=None, value=None,
                          reward=success, done=done, truncated=jnp.zeros_like(done), version=None)
  every = rollout_metrics.rollout_metrics(rollout, success, success)
  first = rollout_metrics.rollout_metrics(rollout, success, success, first_episodes=True)
  assert float(every["rollout/success_rate"]) == pytest.approx(2 / 3)
  assert float(every["rollout/episodes"]) == 3.0
  assert float(first["rollout/success_rate"]) == pytest.approx(0.5)
  assert float(first["rollout/episodes"]) == 2.0


def test_rollout_success_per_task():
  # Instructions 0-1 belong to task "a", 2 to task "b". Env 0 ("a") succeeds at t=0 and then
  # starts a "b" episode that fails at t=3; env 1 ("b") succeeds at t=1.
  instruction = jnp.array([[0, 2], [2, 2], [2, 2], [2, 2]])
  done = jnp.array([[True, False], [False, True], [False, False], [True, False]])
  success = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
  rollout = rl.Transition(obs={"instruction": instruction}, tokens=None, log_probs=None,
                          value=None, reward=success, done=done,
                          truncated=jnp.zeros_like(done), version=None)
  tables = {"instruction_tasks": np.array([0, 0, 1]), "task_names": ("a", "b")}
  every = rollout_metrics.rollout_metrics(rollout, success, success, **tables)
  assert float(every["rollout/a/episodes"]) == 1.0 and float(every["rollout/b/episodes"]) == 2.0
  assert float(every["rollout/a/success_rate"]) == 1.0
  assert float(every["rollout/b/success_rate"]) == pytest.approx(0.5)
  first = rollout_metrics.rollout_metrics(rollout, success, success, first_episodes=True,
                                          **tables)
  assert float(first["rollout/b/episodes"]) == 1.0 and float(first["rollout/b/success_rate"]) == 1
  # Merged slots weight each task's rate by its own episodes.
  both = rollout_metrics.combine_slot_metrics([dict(every, **{"rollout/version_min": 0.0,
                                                              "rollout/version_max": 0.0})] * 2)
  assert float(both["rollout/b/episodes"]) == 4.0
  assert float(both["rollout/b/success_rate"]) == pytest.approx(0.5)


def test_refilled_batch_reports_the_collected_slots():
  """A refilled GRPO batch holds mostly mixed groups; its rollout metrics are those of the
  slots as collected: episode-weighted over all of them."""
  one = {"rollout/episodes": jnp.float32(8), "rollout/success_rate": jnp.float32(0.25),
         "rollout/episode_return": jnp.float32(0.25), "rollout/reward_mean": jnp.float32(0.1),
         "rollout/version_min": jnp.float32(3), "rollout/version_max": jnp.float32(4)}
  two = {"rollout/episodes": jnp.float32(24), "rollout/success_rate": jnp.float32(0.75),
         "rollout/episode_return": jnp.float32(1.0), "rollout/reward_mean": jnp.float32(0.3),
         "rollout/version_min": jnp.float32(4), "rollout/version_max": jnp.float32(5)}
  both = rollout_metrics.combine_slot_metrics([one, two])
  assert float(both["rollout/episodes"]) == 32.0
  assert float(both["rollout/success_rate"]) == pytest.approx((2 + 18) / 32)
  assert float(both["rollout/episode_return"]) == pytest.approx((2 + 24) / 32)
  assert float(both["rollout/reward_mean"]) == pytest.approx(0.2)
  assert (float(both["rollout/version_min"]), float(both["rollout/version_max"])) == (3, 5)


def test_critic_warmup_trains_only_the_value_head(setup):
  state, rollout, _, make_update = setup
  # state.step is 5: a warm-up of 6 updates covers this one, a warm-up of 5 does not.
  new, metrics = _run(make_update(critic_warmup_iterations=6), state, rollout)
  assert metrics["learner/policy_coef"] == 0.0
  assert _max_diff(new.params["value_head"], state.params["value_head"]) > 0
  assert _max_diff(new.params["action_head"], state.params["action_head"]) == 0.0
  new, metrics = _run(make_update(critic_warmup_iterations=5), state, rollout)
  assert metrics["learner/policy_coef"] == 1.0
  assert _max_diff(new.params["action_head"], state.params["action_head"]) > 0


def test_kl_early_stop_skips_the_rest_of_the_update(setup):
  state, rollout, _, make_update = setup
  big = dict(lr=0.05, update_epochs=4)  # Large steps: the policy moves far in one minibatch.
  _, free = _run(make_update(**big), state, rollout)
  assert free["learner/minibatches_applied"] == 1.0 and free["learner/approx_kl"] > 1e-3
  new, stopped = _run(make_update(target_kl=1e-6, **big), state, rollout)
  # The first minibatch starts at the proximal policy (KL 0) and is applied; later ones stop.
  assert 0 < stopped["learner/minibatches_applied"] < 0.5
  assert _max_diff(new.params, state.params) > 0


def test_grpo_update_trains_without_the_critic(setup):
  state, rollout, _, make_update = setup
  # One success in each group of two: both groups are mixed and kept.
  reward = jnp.zeros((T, B)).at[1, 0].set(1.0).at[1, 3].set(1.0)
  new, metrics = _run(make_update(algo="grpo"), state, rollout.replace(reward=reward))
  assert metrics["learner/skipped"] == 0.0 and "learner/value_loss" not in metrics
  assert metrics["learner/groups_kept"] == 1.0
  value_head = lambda p: p["value_head"]  # noqa: E731
  assert _max_diff(value_head(new.params), value_head(state.params)) == 0.0
  assert _max_diff(new.params, state.params) > 0


def test_write_step_fills_one_row_in_place():
  obs_spec = {"proprio": jax.ShapeDtypeStruct((B, 3), jnp.float32)}
  slot = steps.empty_slot(obs_spec, T, B, 2, 3)
  out = steps.ActOutput(tokens=jnp.ones((B, 2, 3), jnp.int32),
                        log_probs=jnp.full((B, 2, 3), -1.0), value=jnp.full((B,), 0.5),
                        actions=jnp.zeros((B, 6)))
  result = steps.EnvStep(obs={"proprio": jnp.ones((B, 3))}, reward=jnp.full((B,), 2.0),
                         done=jnp.ones((B,)), truncated=jnp.zeros((B,)),
                         success=jnp.ones((B,)), episode_return=jnp.full((B,), 3.0))
  write = jax.jit(steps.write_step, donate_argnums=0)
  slot = write(slot, 1, {"proprio": jnp.full((B, 3), 7.0)}, out, 4, result)
  tr = slot.transition
  np.testing.assert_array_equal(tr.obs["proprio"][1], np.full((B, 3), 7.0))
  np.testing.assert_array_equal(tr.obs["proprio"][0], np.zeros((B, 3)))
  np.testing.assert_array_equal(tr.version[1], [4] * B)
  np.testing.assert_array_equal(tr.version[0], [0] * B)
  assert tr.done.dtype == bool and bool(tr.done[1].all()) and not bool(tr.done[0].any())
  metrics = rollout_metrics.slot_metrics(slot)
  assert float(metrics["rollout/episodes"]) == B
  assert float(metrics["rollout/success_rate"]) == 1.0
  assert float(metrics["rollout/episode_return"]) == 3.0
  assert float(metrics["rollout/version_max"]) == 4.0
