"""The synchronous pipeline: roll out T steps over N envs, then update, then repeat.

Every call is one of the compiled functions in `Components`, issued one after another from a
single thread, so the asynchronous pipeline can be compared with it on equal terms.
"""

import jax
import jax.numpy as jnp

from dvla_jax import envs
from dvla_jax import rl
from dvla_jax.training import steps
from dvla_jax.training.builders import Components


def collect_rollout(comp: Components, params, version: jax.Array, env_state, rng: jax.Array):
  """Runs `rl.rollout_length` policy steps on every env.

  Args:
    comp: the run's components.
    params: the acting policy's parameters.
    version: int32 scalar, the policy version of `params` (recorded per step).
    env_state: the batched env state (consumed: the env step donates it).
    rng: sampling key; step t uses `fold_in(rng, t)`.

  Returns:
    (env_state after the last step, rollout `Transition` [T, B, ...], rollout metrics).
  """
  transitions, successes, returns = [], [], []
  for t in range(comp.config.rl.rollout_length):
    out = comp.act(params, env_state.obs, jax.random.fold_in(rng, t))
    obs = env_state.obs
    env_state = comp.env_step(env_state, out.actions)
    transitions.append(rl.Transition(
        obs=obs, tokens=out.tokens, log_probs=out.log_probs, value=out.value,
        reward=env_state.reward, done=env_state.done.astype(bool),
        truncated=env_state.info["truncation"].astype(bool),
        version=jnp.broadcast_to(version, out.value.shape)))
    successes.append(env_state.metrics["success"])
    returns.append(env_state.info["episode_metrics"]["sum_reward"])
  rollout = _stack(transitions)
  metrics = steps.rollout_metrics(rollout, _stack(successes), _stack(returns))
  return env_state, rollout, metrics


_stack = jax.jit(lambda xs: jax.tree.map(lambda *x: jnp.stack(x), *xs))


def iteration(comp: Components, train_state: steps.TrainState, env_state, rng: jax.Array):
  """One synchronous iteration: fresh reset layouts, a rollout, a PPO update.

  Returns:
    (train_state, env_state, metrics dict of device scalars).
  """
  reset_rng, act_rng, update_rng = jax.random.split(rng, 3)
  # Episodes that finish in this rollout restart from new random layouts.
  env_state = envs.refresh_reset_states(env_state, comp.reset(reset_rng))
  env_state, rollout, metrics = collect_rollout(
      comp, train_state.params, train_state.step, env_state, act_rng)
  bootstrap = comp.value(train_state.params, env_state.obs)
  train_state, learner_metrics = comp.update(train_state, rollout, bootstrap, update_rng)
  metrics.update(learner_metrics)
  return train_state, env_state, metrics
