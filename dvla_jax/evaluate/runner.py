"""Restores a run's policy and runs it on fresh episodes of one or more tasks.

The checkpoint's metadata holds the run's config, so the model is rebuilt exactly as it was
trained and only the params item is read. Suite tasks share one scene, so all suite tasks of
an evaluation run in one compiled env (`envs.make_multi`), each world told its task; any other
task gets an env of its own.

Each env world plays one episode per round, from a fresh layout, for at most the episode
limit; an episode ends at its first success. No auto-reset wrapper is needed since only that
first episode counts.
"""

import dataclasses
import math
from typing import Any, Callable, Optional, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dvla_jax import envs
from dvla_jax import models
from dvla_jax.config import default_config
from dvla_jax.envs import episodes as episode_loop
from dvla_jax.envs import tasks as task_table
from dvla_jax.evaluate import paths
from dvla_jax.programs import builders
from dvla_jax.programs import observations
from dvla_jax.programs import steps
from dvla_jax.training import checkpoints


@dataclasses.dataclass
class Policy:
  """A policy restored from a run's checkpoint.

  Attributes:
    config: the run's config (from the checkpoint metadata).
    model_config: the VLA config of the params.
    params: the policy parameters.
    step: the checkpoint's iteration.
    act: jitted `(params, obs, rng) -> actions [B, H*D]`; `obs` holds the model's
      `text` tokens (`observations.model_obs`).
  """

  config: ml_collections.ConfigDict
  model_config: models.VLAConfig
  params: Any
  step: int
  act: Callable


def load_policy(workdir: str, step: Optional[int] = None, greedy: bool = False) -> Policy:
  """Rebuilds the model of the run in `workdir` and restores its params.

  Args:
    workdir: the run's directory (with `checkpoints/`).
    step: the checkpoint to restore (None: the latest).
    greedy: argmax actions (True) or sampling at `model.temperature` (False).

  Returns:
    The policy.

  Raises:
    FileNotFoundError: `workdir` has no checkpoint.
  """
  if not paths.has_checkpoint(workdir):
    raise FileNotFoundError(f"no checkpoint in {paths.checkpoint_dir(workdir)}")
  with checkpoints.Checkpointer(paths.checkpoint_dir(workdir)) as ckpt:
    if step is not None and step not in ckpt.all_steps():
      kept = ", ".join(map(str, ckpt.all_steps()))
      raise FileNotFoundError(f"no checkpoint of step {step} in {ckpt.directory}; kept: {kept}")
    meta = ckpt.metadata(step)
    config = run_config(meta["config"])
    # Only the observation sizes are needed: no renderer. (`env.task` may name several tasks:
    # `envs.make` builds their shared env.)
    probe = envs.make(config.env.task, builders.env_config(config, 1).replace(render=False))
    mcfg = builders.model_config(config, probe)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: models.VLA(mcfg, rngs=nnx.Rngs(0))))
    params = ckpt.restore_params(meta["step"], abstract)
  tokenizer = models.ActionTokenizer([-1.0] * mcfg.action_dim, [1.0] * mcfg.action_dim,
                                     mcfg.num_bins)
  temperature = 0.0 if greedy else float(config.model.temperature)

  @jax.jit
  def act(params, obs, rng):
    return steps.act(graphdef, params, obs, rng, temperature=temperature,
                     tokenizer=tokenizer).actions

  return Policy(config=config, model_config=mcfg, params=params, step=int(meta["step"]),
                act=act)


def run_config(saved: dict) -> ml_collections.ConfigDict:
  """The run's config from its checkpoint, over today's defaults.

  A checkpoint written before a field existed lacks it; the default keeps such a run
  loadable (the defaults of new fields keep the old behaviour).
  """
  config = default_config.get_config()
  _merge(config, saved)
  return config


def _merge(config: ml_collections.ConfigDict, saved: dict) -> None:
  for key, value in saved.items():
    if isinstance(value, dict) and isinstance(config.get(key), ml_collections.ConfigDict):
      _merge(config[key], value)
    else:
      config[key] = value


def is_suite_task(name: str) -> bool:
  return name in task_table.BY_NAME


class TaskGroup:
  """Tasks that run in one compiled env: all suite tasks together, or one other task.

  Attributes:
    names: the tasks; world i of a reset runs `names[task_ids[i]]`.
    env: the single-world env (its `config.num_worlds` is the batch).
    reset: jitted `(keys uint32 [W, 2], task_ids int [W]) -> State`.
    step: jitted `(State, actions [W, H*D]) -> State`.
  """

  def __init__(self, names: Sequence[str], env_config: envs.EnvConfig):
    self.names = list(names)
    if all(is_suite_task(n) for n in names):
      env = envs.make_multi(self.names, env_config)
      reset = jax.vmap(env.reset_task)
    elif len(names) == 1:
      env = envs.make(self.names[0], env_config)
      reset = lambda keys, ids: jax.vmap(env.reset)(keys)  # noqa: E731
    else:
      raise ValueError(f"only suite tasks share an env, got {', '.join(names)}")
    self.env = env
    self.reset = jax.jit(reset)
    self.step = jax.jit(jax.vmap(env.step))

  @property
  def num_worlds(self) -> int:
    return self.env.config.num_worlds


def group_tasks(names: Sequence[str]) -> list[list[str]]:
  """Splits task names into env groups: the suite tasks together, each other task alone."""
  suite = [n for n in names if is_suite_task(n)]
  return ([suite] if suite else []) + [[n] for n in names if not is_suite_task(n)]


def incompatibility(policy: Policy, group: TaskGroup) -> dict[str, str]:
  """The tasks of `group` the policy cannot act in, each with the first mismatch in words."""
  model_config, env = policy.model_config, group.env
  obs = env.observation_size
  checks = (
      ("camera images", tuple(obs["image"]),
       (model_config.num_cameras, model_config.image_size, model_config.image_size, 3)),
      ("proprio size", obs["proprio"][0], model_config.proprio_dim),
      ("action dims", env.action_dim, model_config.action_dim),
      ("action horizon", env.config.action_horizon, model_config.action_horizon),
  )
  for what, task_value, model_value in checks:
    if task_value != model_value:
      why = f"{what} {task_value} != the checkpoint's {model_value}"
      return {name: why for name in group.names}
  out = {}
  for name in group.names:
    table = (task_table.instructions(task_table.BY_NAME[name]) if is_suite_task(name)
             else env.instruction_table())
    need = models.tokenizer.tokens_needed(table)
    if need > model_config.max_text_len:
      out[name] = f"instructions need {need} tokens > the checkpoint's {model_config.max_text_len}"
  return out


@dataclasses.dataclass
class Episodes:
  """Outcomes of a group's episodes; episode e ran task `e % len(names)`.

  Attributes:
    names: the group's tasks.
    task: int [E] task index of each episode.
    success, episode_return, length: float [E] per episode.
    keys: uint32 [E, 2] the reset key of each episode (its layout).
    actions: episode -> float [length, H*D] actions, for the recorded episodes.
    frames: episode -> uint8 [length + 1, cameras, S, S, 3] observations, for the recorded
      episodes (when asked for).
  """

  names: list[str]
  task: np.ndarray
  success: np.ndarray
  episode_return: np.ndarray
  length: np.ndarray
  keys: np.ndarray
  actions: dict[int, np.ndarray]
  frames: dict[int, np.ndarray]

  def of_task(self, index: int) -> np.ndarray:
    """Episode numbers of task `index`, in order."""
    return np.flatnonzero(self.task == index)


def run_episodes(policy: Policy, group: TaskGroup, episodes: int, rng: jax.Array,
                 record: int = 0, keep_frames: bool = False) -> Episodes:
  """Plays `episodes` episodes of every task in `group`.

  Args:
    policy: the restored policy.
    group: the tasks and their env.
    episodes: episodes per task.
    rng: key of the layouts and action sampling; the same key gives the same episodes.
    record: keep the actions (for a video) of this many episodes per task.
    keep_frames: also keep the observation frames of the recorded episodes.

  Returns:
    The outcomes, `episodes * len(group.names)` episodes.
  """
  num_tasks, worlds = len(group.names), group.num_worlds
  total, recorded = episodes * num_tasks, min(record, episodes) * num_tasks
  limit = group.env.config.episode_length
  tokens = jnp.asarray(observations.instruction_tokens(group.env,
                                                       policy.model_config.max_text_len))
  out = {k: [] for k in ("success", "ret", "length", "keys")}
  actions, frames = {}, {}
  for r in range(math.ceil(total / worlds)):
    first = r * worlds
    ids = jnp.asarray((first + np.arange(worlds)) % num_tasks, jnp.int32)
    round_rng = jax.random.fold_in(rng, r)
    keys = jax.random.key_data(jax.random.split(jax.random.fold_in(round_rng, 0), worlds))
    act_rng = jax.random.fold_in(round_rng, 1)
    watch = np.array([i for i in range(worlds) if first + i < recorded], int)
    state = group.reset(keys, ids)
    acts, seen = [], [np.asarray(state.obs["image"][watch])] if watch.size else []

    def step(state, t, act_rng=act_rng, watch=watch, acts=acts):
      a = policy.act(policy.params, observations.model_obs(state.obs, tokens),
                     jax.random.fold_in(act_rng, t))
      if watch.size:
        acts.append(np.asarray(a[watch]))
      return group.step(state, a)

    def record(t, state, nxt, watch=watch, seen=seen):
      del t, state
      if watch.size and keep_frames:
        seen.append(np.asarray(nxt.obs["image"][watch]))

    _, totals = episode_loop.play(state, step, limit, on_step=record)
    n = min(worlds, total - first)
    success, ret, length, keys = (np.asarray(x)[:n] for x in
                                  (totals.success, totals.ret, totals.length, keys))
    for name, value in zip(out, (success, ret, length, keys), strict=True):
      out[name].append(value)
    for j, i in enumerate(watch):
      steps_taken = int(length[i])
      actions[first + i] = np.stack([x[j] for x in acts])[:steps_taken]
      if keep_frames:
        frames[first + i] = np.stack([x[j] for x in seen])[:steps_taken + 1]
  cat = {k: np.concatenate(v) for k, v in out.items()}
  return Episodes(names=group.names, task=np.arange(total) % num_tasks, success=cat["success"],
                  episode_return=cat["ret"], length=cat["length"], keys=cat["keys"],
                  actions=actions, frames=frames)

