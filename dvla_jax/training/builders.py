"""Builds everything a run needs from a config: env, model, optimizer, compiled functions.

`build(config)` returns a `Components` bundle whose jitted functions are the only programs a
pipeline runs; the synchronous loop and the asynchronous lanes both call them.
"""

import dataclasses
import functools
from typing import Any, Callable

from flax import nnx
import jax
import jax.numpy as jnp
import optax

from dvla_jax import envs
from dvla_jax import models
from dvla_jax.training import steps


@dataclasses.dataclass
class Components:
  """The env, model and compiled step functions of one run.

  Attributes:
    config: the run config.
    env: the single-world task env (its `config.num_worlds` is the batch size).
    venv: the batched, auto-resetting env (brax wrappers).
    model_config: the VLA config, with env-derived sizes filled in.
    graphdef: the model's static graph.
    optimizer: the optax transformation.
    init_train_state: `(rng) -> TrainState`.
    reset: jitted `(rng) -> env State` for the whole batch.
    env_step: jitted `(env State, actions [B, H*D]) -> env State`.
    act: jitted `(params, obs, rng) -> ActOutput`.
    act_greedy: jitted `(params, obs) -> ActOutput` at temperature 0 (evaluation).
    value: jitted `(params, obs) -> [B]`.
    update: jitted `(TrainState, rollout, bootstrap [B], rng) -> (TrainState, metrics)`,
      donating the train state.
  """

  config: Any
  env: envs.TabletopEnv
  venv: Any
  model_config: models.VLAConfig
  graphdef: Any
  optimizer: optax.GradientTransformation
  init_train_state: Callable
  reset: Callable
  env_step: Callable
  act: Callable
  act_greedy: Callable
  value: Callable
  update: Callable


def env_config(config) -> envs.EnvConfig:
  """The task env settings a run config asks for."""
  preset = models.get_preset(config.model.preset)
  horizon = config.model.action_horizon or preset.action_horizon
  return envs.EnvConfig(
      num_worlds=config.env.num_envs, image_size=config.env.image_size,
      episode_length=config.env.episode_length, action_horizon=horizon,
      impl=config.env.impl)


def model_config(config, env: envs.TabletopEnv) -> models.VLAConfig:
  """The preset, with image size, chunk shape and proprio size taken from the env."""
  obs_size = env.observation_size
  return models.get_preset(
      config.model.preset, image_size=env.config.image_size,
      num_cameras=obs_size["image"][0], max_text_len=obs_size["text"][0],
      proprio_dim=obs_size["proprio"][0], action_horizon=env.config.action_horizon,
      action_dim=env.action_dim)


def make_optimizer(rl_config) -> optax.GradientTransformation:
  return optax.chain(optax.clip_by_global_norm(rl_config.max_grad_norm),
                     optax.adam(rl_config.lr))


def build(config) -> Components:
  """Builds the env, the model graph and the jitted functions of a run (nothing runs yet)."""
  env = envs.make(config.env.task, env_config(config))
  venv = envs.wrap_for_training(env)
  mcfg = model_config(config, env)
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: models.VLA(mcfg, rngs=nnx.Rngs(0))))
  optimizer = make_optimizer(config.rl)
  tokenizer = models.ActionTokenizer([-1.0] * mcfg.action_dim, [1.0] * mcfg.action_dim,
                                     mcfg.num_bins)
  num_envs = config.env.num_envs

  @jax.jit
  def init_train_state(rng):
    params = nnx.state(models.VLA(mcfg, rngs=nnx.Rngs(params=rng)))
    return steps.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                            opt_state=optimizer.init(params))

  act_fn = functools.partial(steps.act, graphdef, tokenizer=tokenizer)
  rl_config = config.rl
  return Components(
      config=config, env=env, venv=venv, model_config=mcfg, graphdef=graphdef,
      optimizer=optimizer, init_train_state=init_train_state,
      # brax's wrappers size their counters from raw uint32 keys, [B, 2].
      reset=jax.jit(lambda rng: venv.reset(jax.random.key_data(jax.random.split(rng, num_envs)))),
      env_step=jax.jit(venv.step),
      act=jax.jit(functools.partial(act_fn, temperature=config.model.temperature)),
      act_greedy=jax.jit(lambda p, o: act_fn(p, o, jax.random.key(0), temperature=0.0)),
      value=jax.jit(functools.partial(steps.value_only, graphdef)),
      update=jax.jit(functools.partial(steps.update, graphdef, optimizer, rl_config=rl_config),
                     donate_argnums=0),
  )
