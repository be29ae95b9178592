"""Builds everything a run needs from a config: env groups, model, optimizer, compiled functions.

`build(config)` returns a `Components` bundle whose jitted functions are the only programs a
pipeline runs; the synchronous loop and the asynchronous lanes both call them. The envs are
split into `swimlanes.env_groups` groups, each its own env instance (the MJX Warp renderer is
built for a fixed number of worlds) with its own compiled reset and step.
"""

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import optax

from dvla_jax import envs
from dvla_jax import memory
from dvla_jax import models
from dvla_jax import parallel
from dvla_jax.config import config_check
from dvla_jax.config import rng_streams
from dvla_jax.envs import randomization
from dvla_jax.programs import observations
from dvla_jax.programs import rollout_metrics
from dvla_jax.programs import steps


@dataclasses.dataclass
class EnvGroup:
  """One env instance and its compiled functions.

  Attributes:
    env: the single-world task env (its `config.num_worlds` is the group's batch size).
    venv: the batched, auto-resetting env (brax wrappers).
    reset: `(rng, tasks=None, shared=True) -> env State` (jitted) for the whole group; with
      GRPO, consecutive blocks of `rl.group_size` envs share a layout (and task) unless
      `shared=False` (evaluation: every world its own layout). `tasks` (int [B],
      indices into `envs.resolve_tasks(env.task)`) picks each world's task in a multi-task run
      and is ignored in a single-task one.
    env_step: jitted `(env State, actions [B, H*D]) -> env State`.
  """

  env: envs.TabletopEnv
  venv: Any
  reset: Callable
  env_step: Callable

  def start_rollout(self, state, rng: jax.Array, first_episodes: bool, tasks=None):
    """The env state a new rollout slot starts from.

    With `first_episodes` (GRPO, or PPO with `rl.episodic_slots`) every env restarts, so that
    each slot holds one first episode per env from a fresh layout. Otherwise episodes keep
    running and only the ones that finish restart, from the fresh layouts drawn here.
    `tasks`: the worlds' tasks for those layouts (see `reset`; None: they take turns).
    """
    if first_episodes:
      return self.reset(rng, tasks)
    return envs.refresh_reset_states(state, self.reset(rng, tasks))


@dataclasses.dataclass
class Components:
  """The env, model and compiled step functions of one run.

  `env`, `venv`, `reset` and `env_step` are those of env group 0 (the whole batch when there
  is one group).

  Attributes:
    config: the run config.
    env: the single-world task env (its `config.num_worlds` is the batch size).
    venv: the batched, auto-resetting env (brax wrappers).
    groups: the env groups.
    envs_per_group: B, worlds per group (`env.num_envs / swimlanes.env_groups`).
    model_config: the VLA config, with env-derived sizes filled in.
    graphdef: the model's static graph.
    optimizer: the optax transformation.
    init_train_state: `(rng) -> TrainState`.
    reset: `(rng, tasks=None) -> env State` for the whole batch (see `EnvGroup`).
    env_step: jitted `(env State, actions [B, H*D]) -> env State`.
    act: jitted `(params, obs, rng) -> ActOutput`.
    act_greedy: jitted `(params, obs) -> ActOutput` at temperature 0 (evaluation).
    value: jitted `(params, obs) -> [B]`.
    update: jitted `(TrainState, rollout, bootstrap [B], rng) -> (TrainState, metrics)`,
      donating the train state.
    decoupled: whether `update` scores the rollout under the proximal policy first.
    write_step: jitted `steps.write_step`, donating the slot.
    slot_metrics: jitted `rollout_metrics.slot_metrics`.
    copy_params: jitted copy of a params tree (a snapshot the next donated update cannot
      delete).
    poison: jitted `slot -> slot` with NaN rewards (test hook `testing.nan_from`).
    grpo_compact: jitted `steps.grpo_compact` `(slot, bootstrap) -> (slot, bootstrap,
      group_valid)`, donating the slot: the first slot of a refilled GRPO batch.
    grpo_merge: jitted `steps.grpo_merge` `(slot, bootstrap, group_valid, extra,
      extra_bootstrap) -> (slot, bootstrap, group_valid)`, donating the batch slot.
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
  groups: list[EnvGroup] = dataclasses.field(default_factory=list)
  envs_per_group: int = 0
  decoupled: bool = False
  write_step: Optional[Callable] = None
  slot_metrics: Optional[Callable] = None
  copy_params: Optional[Callable] = None
  poison: Optional[Callable] = None
  grpo_compact: Optional[Callable] = None
  grpo_merge: Optional[Callable] = None
  _eval_group: Optional[EnvGroup] = None

  def obs_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
    """Shape and dtype of one step's observations of a group, `[B, ...]`."""
    state = jax.eval_shape(self.groups[0].reset, jax.random.key(0))
    return dict(state.obs)

  def empty_slot(self) -> steps.RolloutSlot:
    """A zero rollout slot `[T, B, ...]` (unjitted; jit it with out_shardings to place it)."""
    return steps.empty_slot(self.obs_spec(), self.config.rl.rollout_length, self.envs_per_group,
                            self.model_config.action_horizon, self.model_config.action_dim)

  def eval_group(self, separate: bool) -> EnvGroup:
    """The env group evaluation runs on: group 0, or (`separate`) an instance of its own.

    The async pipeline keeps every group busy, so its evaluations need their own env.
    """
    if not separate:
      return self.groups[0]
    if self._eval_group is None:
      self._eval_group = _make_group(self.config, self.envs_per_group)
    return self._eval_group

  def for_group(self, group: EnvGroup) -> "Components":
    """A view whose `env`, `reset`, `env_step` and `config.env.num_envs` are `group`'s.

    `evaluation.evaluate` reads the batch size from `config.env.num_envs`.
    """
    config = ml_collections.ConfigDict(self.config.to_dict())
    config.env.num_envs = group.env.config.num_worlds
    return dataclasses.replace(self, config=config, env=group.env, venv=group.venv,
                               reset=group.reset, env_step=group.env_step)


def env_config(config, num_worlds: Optional[int] = None) -> envs.EnvConfig:
  """The task env settings a run config asks for (`num_worlds` default: env.num_envs)."""
  preset = models.get_preset(config.model.preset)
  horizon = config.model.action_horizon or preset.action_horizon
  return envs.EnvConfig(
      num_worlds=num_worlds or config.env.num_envs, image_size=config.env.image_size,
      episode_length=config.env.episode_length or None, action_horizon=horizon,
      impl=config.env.impl, reward_shaping=config.env.reward_shaping,
      shaping_gamma=config.rl.gamma)


def model_config(config, env: envs.TabletopEnv) -> models.VLAConfig:
  """The preset, with image size, chunk shape and proprio size taken from the env, and the
  compute dtype, remat and action head choices from `config.model`."""
  obs_size = env.observation_size
  try:
    return _model_config(config, env, obs_size)
  except ValueError as e:  # The model's own fields (e.g. trainable) name config.model's.
    if str(e).startswith(("VLAConfig.trainable", "VLAConfig.lora_rank")):
      raise config_check.ConfigError(str(e).replace("VLAConfig.", "model.", 1)) from None
    raise


def _model_config(config, env, obs_size) -> models.VLAConfig:
  return models.get_preset(
      config.model.preset, image_size=env.config.image_size,
      num_cameras=obs_size["image"][0],
      max_text_len=models.tokenizer.text_len(env.instruction_table()),
      proprio_dim=obs_size["proprio"][0], action_horizon=env.config.action_horizon,
      action_dim=env.action_dim, dtype=config.model.dtype, remat=config.model.remat,
      action_free_logits=config.model.action_head == "bins",
      lora_rank=config.model.lora_rank, trainable=config.model.trainable)


def _scale_value_head(factor: float) -> optax.GradientTransformation:
  """Multiplies the value head's updates by `factor` (stateless)."""
  def update(updates, state, params=None):
    del params
    return jax.tree_util.tree_map_with_path(
        lambda path, u: u * factor if steps.on_value_head(path) else u, updates), state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def make_optimizer(rl_config, trainable: Optional[Sequence[str]] = None
                   ) -> optax.GradientTransformation:
  """Adam after a global-norm clip; the value head's steps at `rl_config.value_lr` when set.

  The critic of a cloned policy starts from nothing and must fit returns in a few updates,
  while the policy should move slowly: Adam moves each parameter by about its learning rate
  per step, so one rate for both either starves the critic or shakes the policy. The value
  head's Adam steps are rescaled by value_lr / lr, which is Adam at value_lr for those
  parameters; the optimizer state has the same structure either way (so an SFT checkpoint
  restores into an RL run).

  With `trainable` (parameter groups, `models.trainable`; None = every parameter), only those
  groups are stepped (and clipped together); the others get no optimizer state and a zero
  update, so their values never change.
  """
  value_lr = rl_config.get("value_lr", 0.0) or rl_config.lr
  adam = optax.chain(optax.clip_by_global_norm(rl_config.max_grad_norm),
                     optax.adam(rl_config.lr), _scale_value_head(value_lr / rl_config.lr))
  if trainable is None:
    return adam
  return optax.multi_transform(
      {"train": adam, "frozen": optax.set_to_zero()},
      lambda params: models.trainable.labels(params, trainable))


def _make_group(config, num_worlds: int) -> EnvGroup:
  """One env group of `num_worlds` worlds of the run's task spec, with its jitted functions.

  The group's `reset(rng, tasks=None)` lays out every world from `rng`. In a run of several
  tasks (`env.task` a suite or a list), world i runs `tasks[i]` (an index into
  `envs.resolve_tasks(env.task)`) when given, else the tasks take turns over the worlds (each
  as often, up to one) from an offset drawn from `rng`, so every task trains on every reset.
  With GRPO, each block of `rl.group_size` worlds shares its layout and its task.
  """
  env = envs.make(config.env.task, env_config(config, num_worlds))
  limit = env.config.episode_length
  if steps.first_episode_slots(config.rl) and config.rl.rollout_length < limit:
    why = "rl.algo='grpo'" if config.rl.algo == "grpo" else "rl.episodic_slots=True"
    raise config_check.ConfigError(
        f"rl.rollout_length={config.rl.rollout_length} shorter than {config.env.task!r}'s "
        f"episode of {limit} steps with {why}; allowed: >= {limit} (every env "
        "finishes an episode)")
  num_tasks = len(envs.resolve_tasks(config.env.task))
  # Every group draws the same per-world physics and colours (one key per run).
  venv = randomization.wrap_env(envs.TaskFromKey(env) if num_tasks > 1 else env,
                                config.env.domain_randomization,
                                jax.random.fold_in(jax.random.key(config.seed), rng_streams.DOMAIN))
  # The model side tokenises the instructions the env names by index.
  venv = observations.InstructionTokens(venv, models.tokenizer.text_len(env.instruction_table()))

  def make_reset(share: int):
    layouts = num_worlds // share

    @jax.jit
    def reset_tasks(rng, tasks):
      keys = jax.random.split(rng, layouts)
      if share > 1:  # GRPO: each group of envs starts from one shared layout.
        keys = jnp.repeat(keys, share, axis=0)
      # brax's wrappers size their counters from raw uint32 keys, [B, 2].
      keys = jax.random.key_data(keys)
      if num_tasks == 1:
        return venv.reset(keys)
      offset = jax.random.randint(jax.random.fold_in(rng, rng_streams.TASK), (), 0, num_tasks)
      turns = (jnp.arange(num_worlds) // share + offset) % num_tasks
      return venv.reset(envs.task_keys(keys, jnp.where(tasks < 0, turns, tasks)))
    return reset_tasks

  share = config.rl.group_size if config.rl.algo == "grpo" else 1
  shared_reset = make_reset(share)
  resets = {True: shared_reset, False: make_reset(1) if share > 1 else shared_reset}

  def reset(rng, tasks=None, shared: bool = True):
    # One compiled reset for both: -1 stands for "take turns". `shared=False` gives every
    # world its own layout whatever the algorithm (evaluation).
    if tasks is None:
      tasks = jnp.full((num_worlds,), -1, jnp.int32)
    return resets[shared](rng, jnp.asarray(tasks, jnp.int32))

  return EnvGroup(env=env, venv=venv, reset=reset, env_step=jax.jit(venv.step))


def make_placement(config, planes: tuple[str, ...] = ("actor", "learner")) -> parallel.Placement:
  """The plane meshes of `config.placement`; a placement the devices cannot hold, or whose
  model axes (on `planes`) do not divide the model's width, heads or MLP size, is a
  ConfigError (one line naming the field)."""
  try:
    placement = parallel.Placement(parallel.make_plane_meshes(config.placement))
    preset = models.get_preset(config.model.preset)
    for plane in planes:
      parallel.check_mesh_divides(preset, placement.mesh(plane), where=f"placement.{plane}")
  except (parallel.PlacementError, parallel.MeshDivisionError) as e:
    raise config_check.ConfigError(str(e)) from None
  return placement


def uses_decoupled_ppo(config) -> bool:
  """`rl.decoupled`, with "auto" meaning on for the async pipeline only."""
  if config.rl.decoupled == "auto":
    return config.pipeline == "async"
  return config.rl.decoupled == "on"


def build(config) -> Components:
  """Builds the env groups, the model graph and the jitted functions of a run (nothing runs yet).

  Jitted functions follow the shardings of their inputs, so the same programs run on one
  device or on the plane meshes; the pipelines place the inputs (see
  `dvla_jax.parallel.Placement`).
  """
  num_groups = config.swimlanes.env_groups
  per_group = config.env.num_envs // num_groups
  groups = [_make_group(config, per_group) for _ in range(num_groups)]
  env, venv = groups[0].env, groups[0].venv
  mcfg = model_config(config, env)
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: models.VLA(mcfg, rngs=nnx.Rngs(0))))
  optimizer = make_optimizer(config.rl, models.trainable.partial(mcfg))
  tokenizer = models.ActionTokenizer([-1.0] * mcfg.action_dim, [1.0] * mcfg.action_dim,
                                     mcfg.num_bins)
  decoupled = uses_decoupled_ppo(config)

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
      reset=groups[0].reset, env_step=groups[0].env_step,
      act=jax.jit(functools.partial(act_fn, temperature=config.model.temperature)),
      act_greedy=jax.jit(lambda p, o: act_fn(p, o, jax.random.key(0), temperature=0.0)),
      value=jax.jit(functools.partial(steps.value_only, graphdef)),
      update=jax.jit(functools.partial(steps.update, graphdef, optimizer, rl_config=rl_config,
                                       decoupled=decoupled,
                                       temperature=config.model.temperature),
                     donate_argnums=0),
      groups=groups, envs_per_group=per_group, decoupled=decoupled,
      write_step=jax.jit(steps.write_step, donate_argnums=0),
      slot_metrics=jax.jit(functools.partial(
          rollout_metrics.slot_metrics, first_episodes=steps.first_episode_slots(config.rl),
          **_task_tables(config, env))),
      copy_params=memory.copy_tree,
      poison=jax.jit(_poison),
      grpo_compact=jax.jit(functools.partial(
          steps.grpo_compact, group_size=rl_config.group_size,
          reward_scale=rl_config.reward_scale), donate_argnums=(0, 1)),
      grpo_merge=jax.jit(functools.partial(
          steps.grpo_merge, group_size=rl_config.group_size,
          reward_scale=rl_config.reward_scale), donate_argnums=(0, 1)),
  )


def _task_tables(config, env) -> dict[str, Any]:
  """`slot_metrics`' per-task arguments: none in a single-task run."""
  names = envs.resolve_tasks(config.env.task)
  if len(names) == 1:
    return {}
  return {"instruction_tasks": env.instruction_tasks(), "task_names": tuple(names)}


def _poison(slot: steps.RolloutSlot) -> steps.RolloutSlot:
  transition = slot.transition
  return slot.replace(transition=transition.replace(reward=transition.reward * jnp.nan))
