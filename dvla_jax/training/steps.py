"""The jittable step functions every pipeline is built from: act, env step, learner update.

They are pure functions of explicit state so that the synchronous loop and the asynchronous
lanes call exactly the same compiled programs; `build` in `builders.py` binds them to a config.
"""

from typing import Any

import flax.struct
from flax import nnx
import jax
import jax.numpy as jnp
import optax

from dvla_jax import models
from dvla_jax import rl


@flax.struct.dataclass
class TrainState:
  """Learner state: a static-pool resident, updated only by donated functions.

  Attributes:
    step: learner updates applied so far; it is also the policy version of `params`.
    params: the policy parameters (an `nnx.State`).
    opt_state: optax state for `params`.
  """

  step: jax.Array
  params: Any
  opt_state: Any


@flax.struct.dataclass
class ActOutput:
  tokens: jax.Array  # int32 [B, H, D]
  log_probs: jax.Array  # f32 [B, H, D]
  value: jax.Array  # f32 [B]
  actions: jax.Array  # f32 [B, H * D], decoded bin centres in [-1, 1]


def act(graphdef, params, obs, rng, *, temperature: float, tokenizer: models.ActionTokenizer
        ) -> ActOutput:
  """Policy forward for a batch: samples an action chunk and records what PPO needs."""
  model = nnx.merge(graphdef, params)
  logits, value = model(obs)
  tokens = models.sample_tokens(logits, rng, temperature)
  log_probs = models.token_log_probs(logits, tokens)
  actions = tokenizer.decode(tokens)
  return ActOutput(tokens=tokens, log_probs=log_probs, value=value,
                   actions=jnp.reshape(actions, (actions.shape[0], -1)))


def value_only(graphdef, params, obs) -> jax.Array:
  """Critic value of a batch of observations (for bootstrapping the last rollout step)."""
  return nnx.merge(graphdef, params)(obs)[1]


def _ppo_objective(params, graphdef, batch: rl.PPOBatch, learner_version, rl_config):
  model = nnx.merge(graphdef, params)
  logits, values = model(batch.obs)
  log_probs = models.token_log_probs(logits, batch.tokens)
  entropy = models.token_entropy(logits)
  return rl.ppo_loss(
      log_probs, values, entropy, batch,
      clip_eps=rl_config.clip_eps, value_clip_eps=rl_config.value_clip_eps,
      vf_coef=rl_config.vf_coef, ent_coef=rl_config.ent_coef,
      staleness=learner_version - batch.version)


def update(graphdef, optimizer: optax.GradientTransformation, state: TrainState,
           rollout: rl.Transition, bootstrap_value: jax.Array, rng: jax.Array, *, rl_config
           ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One PPO update on a full rollout: GAE, then epochs x shuffled minibatches.

  Args:
    graphdef: the model's static graph (from `nnx.split`).
    optimizer: the optax transformation whose state is `state.opt_state`.
    state: the learner state (donate it when jitting).
    rollout: `Transition` with leaves [T, B, ...].
    bootstrap_value: [B] critic value of the observation after the last step.
    rng: shuffling key.
    rl_config: the `rl` config block (static).

  Returns:
    The new state and a dict of scalar metrics (means over minibatches).
  """
  rewards = rollout.reward * rl_config.reward_scale
  advantages, returns = rl.gae(
      rewards, rollout.value, rollout.done, rollout.truncated, bootstrap_value,
      gamma=rl_config.gamma, lam=rl_config.gae_lambda)
  batch = rl.make_ppo_batch(rollout, advantages, returns)
  n = batch.size
  num_mb = rl_config.num_minibatches
  grad_fn = jax.value_and_grad(_ppo_objective, has_aux=True)

  def minibatch_step(carry, idx):
    st = carry
    mb = jax.tree.map(lambda x: x[idx], batch)
    (_, metrics), grads = grad_fn(st.params, graphdef, mb, st.step, rl_config)
    updates, opt_state = optimizer.update(grads, st.opt_state, st.params)
    params = optax.apply_updates(st.params, updates)
    metrics["learner/grad_norm"] = optax.tree.norm(grads)
    return st.replace(params=params, opt_state=opt_state), metrics

  def epoch(carry, epoch_rng):
    perm = jax.random.permutation(epoch_rng, n).reshape(num_mb, n // num_mb)
    return jax.lax.scan(minibatch_step, carry, perm)

  new_state, metrics = jax.lax.scan(
      epoch, state, jax.random.split(rng, rl_config.update_epochs))
  metrics = jax.tree.map(jnp.mean, metrics)
  metrics["learner/advantage_mean"] = jnp.mean(advantages)
  metrics["learner/return_mean"] = jnp.mean(returns)
  metrics["learner/value_mean"] = jnp.mean(rollout.value)
  return new_state.replace(step=state.step + 1), metrics


def rollout_metrics(rollout: rl.Transition, success: jax.Array, episode_return: jax.Array
                    ) -> dict[str, jax.Array]:
  """Success rate and return of the episodes that finished inside a rollout.

  Args:
    rollout: the rollout ([T, B] leaves).
    success: [T, B] 1.0 where the step ended in success.
    episode_return: [T, B] return of the finished episode at `done` steps.

  Returns:
    Scalar metrics under `rollout/`.
  """
  done = rollout.done.astype(jnp.float32)
  finished = jnp.maximum(jnp.sum(done), 1.0)
  return {
      "rollout/episodes": jnp.sum(done),
      "rollout/success_rate": jnp.sum(done * success) / finished,
      "rollout/episode_return": jnp.sum(done * episode_return) / finished,
      "rollout/reward_mean": jnp.mean(rollout.reward),
  }
