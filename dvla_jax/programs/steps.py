"""The jittable step functions every pipeline is built from: act, env step, learner update.

They are pure functions of explicit state so that the synchronous loop and the asynchronous
lanes call exactly the same compiled programs; `build` in `builders.py` binds them to a config.
"""

from typing import Any

from flax import nnx
import flax.struct
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
  # The behaviour log-probs of the policy that was sampled: softmax(logits / temperature).
  log_probs = models.token_log_probs(logits, tokens, temperature)
  actions = tokenizer.decode(tokens)
  return ActOutput(tokens=tokens, log_probs=log_probs, value=value,
                   actions=jnp.reshape(actions, (actions.shape[0], -1)))


def value_only(graphdef, params, obs) -> jax.Array:
  """Critic value of a batch of observations (for bootstrapping the last rollout step)."""
  return nnx.merge(graphdef, params)(obs)[1]


def _policy_objective(params, graphdef, batch: rl.PPOBatch, sample_weight, learner_version,
                      policy_coef, rl_config, temperature):
  model = nnx.merge(graphdef, params)
  logits, values = model(batch.obs)
  log_probs = models.token_log_probs(logits, batch.tokens, temperature)
  entropy = models.token_entropy(logits, temperature)
  common = dict(
      clip_eps=rl_config.clip_eps, clip_eps_high=rl_config.clip_eps_high,
      ratio_level=rl_config.ratio_level, sample_weight=sample_weight,
      ent_coef=rl_config.ent_coef, staleness=learner_version - batch.version,
      max_staleness=None if rl_config.max_staleness < 0 else rl_config.max_staleness,
      behaviour_weight_cap=rl_config.behaviour_weight_cap or None)
  if rl_config.algo == "grpo":
    return rl.grpo_loss(log_probs, entropy, batch, **common)
  return rl.ppo_loss(log_probs, values, entropy, batch, value_clip_eps=rl_config.value_clip_eps,
                     vf_coef=rl_config.vf_coef, policy_coef=policy_coef, **common)


def first_episode_slots(rl_config) -> bool:
  """Whether every rollout slot restarts all envs and learns from each env's first episode.

  GRPO always does (a group's members must start together). PPO does with
  `rl.episodic_slots`: when finished episodes restart within a slot, they restart from the
  layout drawn for that env at the slot's start, so a layout the policy solves in a few steps
  is replayed many times per slot and easy layouts dominate the batch; first episodes weigh
  every layout once.
  """
  return rl_config.algo == "grpo" or rl_config.episodic_slots


def first_episode_mask(done: jax.Array) -> jax.Array:
  """[T, B] 1.0 where step t belongs to env b's first episode of the slot."""
  done = done.astype(jnp.float32)
  # No episode ended before step t (exclusive).
  return jnp.concatenate([jnp.ones_like(done[:1]), jnp.cumprod(1.0 - done, axis=0)[:-1]])


def on_value_head(path) -> bool:
  """Whether a params-tree path (`jax.tree_util` keys) is in the critic's value head."""
  return any(getattr(k, "key", None) == "value_head" for k in path)


def _value_head_only(grads, policy_coef):
  """During a critic warm-up (`policy_coef` 0) only the value head learns: the value loss's
  gradient through the shared trunk would otherwise move the cloned policy (Adam steps every
  parameter by about the learning rate, however small its gradient)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, g: g if on_value_head(path) else g * policy_coef, grads)


def _grpo_outcome(rollout: rl.Transition, rewards: jax.Array, group_size: int):
  """(outcome f32 [B]: did each env's first episode succeed, mixed f32 [B / G]: 1 for a group
  whose outcomes differ)."""
  alive = first_episode_mask(rollout.done)
  # Binary outcome: did the first episode succeed (any positive reward in it)?
  outcome = (jnp.sum(alive * (rewards > 0), axis=0) > 0).astype(jnp.float32)
  groups = outcome.reshape(-1, group_size)
  mixed = (jnp.max(groups, axis=1) > jnp.min(groups, axis=1)).astype(jnp.float32)
  return outcome, mixed


def _grpo_advantages(rollout: rl.Transition, rewards: jax.Array, group_size: int,
                     group_valid: jax.Array | None = None):
  """Group-normalised success of each env's first episode in the slot, on that episode's steps.

  Dynamic sampling (SimpleVLA-RL): a group whose episodes all succeeded or all failed carries
  no signal (its advantages are 0), so its samples are dropped from the loss's means rather
  than diluting them; so are the steps after each env's first episode. `group_valid` [B / G]
  (a batch refilled by `grpo_merge`) also drops the positions no group was written to.

  Returns:
    (advantages [T, B], sample weight [T, B] in {0, 1}, outcome [B], kept-group fraction).
  """
  alive = first_episode_mask(rollout.done)
  outcome, mixed = _grpo_outcome(rollout, rewards, group_size)
  if group_valid is not None:
    mixed = mixed * group_valid
  weight = alive * jnp.repeat(mixed, group_size)[None]
  return alive * rl.grpo_advantages(outcome, group_size)[None], weight, outcome, jnp.mean(mixed)


def _gather_groups(batch, extra, take: jax.Array, source: jax.Array, group_size: int,
                   axis: int):
  """`batch` with each group position q where `take[q]` replaced by `extra`'s group
  `source[q]`; every leaf has the envs on `axis`, in groups of `group_size` adjacent envs."""
  members = jnp.arange(group_size)
  env_source = (source[:, None] * group_size + members[None]).reshape(-1)
  env_take = jnp.repeat(take, group_size)

  def put(b, e):
    shape = [1] * b.ndim
    shape[axis] = env_take.shape[0]
    return jnp.where(env_take.reshape(shape), jnp.take(e, env_source, axis=axis), b)

  return jax.tree.map(put, batch, extra)


def grpo_compact(slot: "RolloutSlot", bootstrap: jax.Array, *, group_size: int,
                 reward_scale: float):
  """The start of a refilled GRPO batch: `slot` with its mixed groups moved to the front.

  Returns:
    (slot, bootstrap, group_valid f32 [B / G]: 1 for the leading mixed groups).
  """
  _, mixed = _grpo_outcome(slot.transition, slot.transition.reward * reward_scale, group_size)
  order = jnp.argsort(-mixed, stable=True)  # Mixed groups first, in slot order.
  take = jnp.ones_like(mixed, bool)
  slot = _gather_groups(slot, slot, take, order, group_size, axis=1)  # Leaves [T, B, ...].
  bootstrap = _gather_groups(bootstrap, bootstrap, take, order, group_size, axis=0)
  return slot, bootstrap, mixed[order]


def grpo_merge(slot: "RolloutSlot", bootstrap: jax.Array, group_valid: jax.Array,
               extra: "RolloutSlot", extra_bootstrap: jax.Array, *, group_size: int,
               reward_scale: float):
  """Refills a GRPO batch: `extra`'s mixed groups go into the free positions after the
  `group_valid` ones (dynamic sampling, as SimpleVLA-RL and DAPO sample until the batch is
  full of groups that carry signal). Groups that do not fit are dropped.

  Returns:
    (slot, bootstrap, group_valid) of the refilled batch.
  """
  count = jnp.sum(group_valid).astype(jnp.int32)
  _, mixed = _grpo_outcome(extra.transition, extra.transition.reward * reward_scale,
                           group_size)
  order = jnp.argsort(-mixed, stable=True)
  available = jnp.sum(mixed).astype(jnp.int32)
  k = jnp.arange(mixed.shape[0]) - count
  take = (k >= 0) & (k < available)
  source = order[jnp.clip(k, 0, mixed.shape[0] - 1)]
  slot = _gather_groups(slot, extra, take, source, group_size, axis=1)
  bootstrap = _gather_groups(bootstrap, extra_bootstrap, take, source, group_size, axis=0)
  return slot, bootstrap, jnp.maximum(group_valid, take.astype(group_valid.dtype))


def _proximal_log_probs(graphdef, params, batch: rl.PPOBatch, num_chunks: int,
                        temperature) -> jax.Array:
  """Log-probs of the batch's tokens under `params` at the sampling temperature, in
  `num_chunks` forward passes."""

  def chunk(x):
    return jnp.reshape(x, (num_chunks, -1) + x.shape[1:])

  def score(mb):
    logits, _ = nnx.merge(graphdef, params)(mb["obs"])
    return models.token_log_probs(logits, mb["tokens"], temperature)

  log_probs = jax.lax.map(score, {"obs": jax.tree.map(chunk, batch.obs),
                                  "tokens": chunk(batch.tokens)})
  return jax.lax.stop_gradient(jnp.reshape(log_probs, batch.tokens.shape))


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def update(graphdef, optimizer: optax.GradientTransformation, state: TrainState,
           rollout: rl.Transition, bootstrap_value: jax.Array, rng: jax.Array,
           group_valid: jax.Array | None = None, *, rl_config, decoupled: bool = False,
           temperature: float = 1.0) -> tuple[TrainState, dict[str, jax.Array]]:
  """One learner update on a full rollout slot: advantages, then epochs x shuffled minibatches.

  PPO uses GAE with the value head; GRPO (`rl_config.algo == "grpo"`) uses the
  group-normalised success of each env's first episode, and drops groups whose outcomes were
  all equal. With `decoupled`, the proximal policy is the learner's weights at the start of
  this update: the rollout is scored under them first, and the loss corrects for the (possibly
  older) behaviour policy with a truncated importance weight; samples staler than
  `rl_config.max_staleness` versions are dropped.

  PPO's first `rl_config.critic_warmup_iterations` updates train the value head only (policy
  loss weight 0, every other gradient zero), so that the first policy updates see advantages
  from a fitted critic. With `rl_config.episodic_slots`, only each env's first episode in the
  slot is learnt from (see `first_episode_slots`). With
  `rl_config.target_kl > 0` the update stops early, skipping the remaining minibatches of
  all epochs, once a minibatch's approx-KL to the proximal (or behaviour) policy exceeds
  1.5 x target_kl; `learner/minibatches_applied` is the fraction applied.

  If the loss or any gradient is not finite in any minibatch, the whole update is skipped
  (parameters and optimizer state come back unchanged) and `learner/skipped` is 1; `step`
  still advances, since it counts iterations.

  Args:
    graphdef: the model's static graph (from `nnx.split`).
    optimizer: the optax transformation whose state is `state.opt_state`.
    state: the learner state (donate it when jitting).
    rollout: `Transition` with leaves [T, B, ...].
    bootstrap_value: [B] critic value of the observation after the last step (PPO only).
    rng: shuffling key.
    group_valid: GRPO: f32 [B / G], 0 for group positions of a refilled batch that no group
      filled (`grpo_merge`); None: every group position holds a group.
    rl_config: the `rl` config block (static).
    decoupled: compute proximal log-probs (static).
    temperature: the sampling temperature of the rollouts (static): every log-prob and the
      entropy are of softmax(logits / temperature).

  Returns:
    The new state and a dict of scalar metrics (means over minibatches).
  """
  rewards = rollout.reward * rl_config.reward_scale
  extra = {}
  t, b = rollout.reward.shape[:2]
  if rl_config.algo == "grpo":
    advantages, weight, outcome, kept = _grpo_advantages(rollout, rewards, rl_config.group_size,
                                                         group_valid)
    batch = rl.make_ppo_batch(rollout, advantages)
    extra["learner/return_mean"] = jnp.mean(outcome)
    extra["learner/groups_kept"] = kept
    sample_weight = jnp.reshape(weight, (t * b,))
    policy_coef = jnp.ones((), jnp.float32)
  else:
    advantages, returns = rl.gae(
        rewards, rollout.value, rollout.done, rollout.truncated, bootstrap_value,
        gamma=rl_config.gamma, lam=rl_config.gae_lambda)
    batch = rl.make_ppo_batch(rollout, advantages, returns)
    extra["learner/return_mean"] = jnp.mean(returns)
    extra["learner/value_mean"] = jnp.mean(rollout.value)
    sample_weight = jnp.ones((t * b,), jnp.float32)
    if rl_config.episodic_slots:  # Learn from each env's first episode only.
      sample_weight = jnp.reshape(first_episode_mask(rollout.done), (t * b,))
    policy_coef = (state.step >= rl_config.critic_warmup_iterations).astype(jnp.float32)
  n = batch.size
  num_mb = rl_config.num_minibatches
  if decoupled:
    batch = batch.replace(prox_log_probs=_proximal_log_probs(
        graphdef, state.params, batch, num_mb, temperature))
  grad_fn = jax.value_and_grad(_policy_objective, has_aux=True)
  kl_limit = 1.5 * rl_config.target_kl if rl_config.target_kl > 0 else jnp.inf

  def minibatch_step(carry, idx):
    state_now, ok, stopped = carry
    mb = jax.tree.map(lambda x: x[idx], batch)
    (loss, metrics), grads = grad_fn(state_now.params, graphdef, mb, sample_weight[idx],
                                     state_now.step, policy_coef, rl_config, temperature)
    # The KL is of the parameters before this minibatch's step: past the limit, neither this
    # step nor any later one of this update is applied.
    stopped = stopped | (policy_coef * metrics["learner/approx_kl"] > kl_limit)
    grads = _value_head_only(grads, policy_coef)
    updates, opt_state = optimizer.update(grads, state_now.opt_state, state_now.params)
    new = state_now.replace(params=optax.apply_updates(state_now.params, updates),
                            opt_state=opt_state)
    state_now = jax.tree.map(lambda a, b: jnp.where(stopped, b, a), new, state_now)
    metrics["learner/grad_norm"] = optax.global_norm(grads)
    metrics["learner/minibatches_applied"] = 1.0 - stopped.astype(jnp.float32)
    finite = jnp.isfinite(loss) & _all_finite(grads)
    return (state_now, ok & finite, stopped), metrics

  def epoch(carry, epoch_rng):
    perm = jax.random.permutation(epoch_rng, n).reshape(num_mb, n // num_mb)
    return jax.lax.scan(minibatch_step, carry, perm)

  (new_state, ok, _), metrics = jax.lax.scan(
      epoch, (state, jnp.ones((), bool), jnp.zeros((), bool)),
      jax.random.split(rng, rl_config.update_epochs))
  # A non-finite minibatch anywhere voids the whole update: keep the state it started from.
  new_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state)
  metrics = jax.tree.map(jnp.mean, metrics)
  metrics.update(extra)
  metrics["learner/advantage_mean"] = jnp.mean(advantages)
  metrics["learner/policy_coef"] = policy_coef
  metrics["learner/skipped"] = 1.0 - ok.astype(jnp.float32)
  return new_state.replace(step=state.step + 1), metrics


@flax.struct.dataclass
class EnvStep:
  """What the sampling lane hands the inference lane after stepping an env group.

  Attributes:
    obs: the observations to act on next, each `[B, ...]`.
    reward: f32 [B] reward of the step just taken (0 after a reset).
    done: [B] the step ended an episode.
    truncated: [B] the step ended an episode by the time limit.
    success: [B] the step ended in success.
    episode_return: [B] return of the finished episode at `done` steps.
  """

  obs: Any
  reward: jax.Array
  done: jax.Array
  truncated: jax.Array
  success: jax.Array
  episode_return: jax.Array


def env_step_result(state) -> EnvStep:
  """The `EnvStep` of a batched env state (after a reset, its reward and flags are 0)."""
  return EnvStep(obs=state.obs, reward=state.reward, done=state.done,
                 truncated=state.info["truncation"], success=state.metrics["success"],
                 episode_return=state.info["episode_metrics"]["sum_reward"])


@flax.struct.dataclass
class RolloutSlot:
  """A rollout slot of the dynamic pool: T steps of one env group, time-major.

  Attributes:
    transition: `rl.Transition` with leaves `[T, B, ...]`.
    success: f32 [T, B] 1.0 where the step ended in success.
    episode_return: f32 [T, B] return of the finished episode at `done` steps.
  """

  transition: rl.Transition
  success: jax.Array
  episode_return: jax.Array


def empty_slot(obs_spec, rollout_length: int, num_envs: int, action_horizon: int,
               action_dim: int) -> RolloutSlot:
  """A zero slot; `obs_spec` maps obs names to `jax.ShapeDtypeStruct`s of one step `[B, ...]`."""
  tb = (rollout_length, num_envs)
  chunk = tb + (action_horizon, action_dim)
  # Every field its own buffer: the slot is donated field by field.
  zeros = lambda shape, dtype=jnp.float32: jnp.zeros(shape, dtype)  # noqa: E731
  return RolloutSlot(
      transition=rl.Transition(
          obs={k: zeros(tb + tuple(v.shape[1:]), v.dtype) for k, v in obs_spec.items()},
          tokens=zeros(chunk, jnp.int32), log_probs=zeros(chunk), value=zeros(tb),
          reward=zeros(tb), done=zeros(tb, bool), truncated=zeros(tb, bool),
          version=zeros(tb, jnp.int32)),
      success=zeros(tb), episode_return=zeros(tb))


def write_step(slot: RolloutSlot, t, obs, out: ActOutput, version, result: EnvStep
               ) -> RolloutSlot:
  """Writes step `t` of a slot in place (jit it donating `slot`).

  Args:
    slot: the slot being filled.
    t: int32 step index.
    obs: the observations acted on at step t, each `[B, ...]`.
    out: the policy output for `obs`.
    version: int32 scalar, the policy version of the weights that acted.
    result: the env's answer to the action (reward, done, ... of step t).

  Returns:
    The slot with step t written.
  """
  def put(buf, x):
    x = jnp.broadcast_to(jnp.asarray(x).astype(buf.dtype), buf.shape[1:])
    return jax.lax.dynamic_update_index_in_dim(buf, x, t, 0)

  step = rl.Transition(
      obs=obs, tokens=out.tokens, log_probs=out.log_probs, value=out.value,
      reward=result.reward, done=result.done, truncated=result.truncated, version=version)
  return RolloutSlot(
      transition=jax.tree.map(put, slot.transition, step),
      success=put(slot.success, result.success),
      episode_return=put(slot.episode_return, result.episode_return))
