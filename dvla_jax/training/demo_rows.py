"""Demonstration rows for behaviour cloning: recorded in-process, loaded, cached and batched.

`load_or_record` gives a run its demonstration steps: from `sft.demos` (a directory written by
`tools/write_demos.py`, format `training.demos`) when set, else recorded by running the task's
scripted expert (`env.expert_action`) through the run's own batched env (`record_demos`), so
nothing is compiled twice, and kept in `<workdir>/demos.npz` (`DEMOS_FILE`) for a resumed
run. A row is `env.episode_length` expert steps of one env, several episodes when the expert
finishes early. `batches` and `to_batch` serve them to the learner.
"""

import os
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from dvla_jax import envs
from dvla_jax import models
from dvla_jax.config import config_check
from dvla_jax.config import rng_streams
from dvla_jax.envs import episodes
from dvla_jax.programs import builders
from dvla_jax.training import console
from dvla_jax.training import demos as demos_lib

DEMOS_FILE = "demos.npz"


def check_experts(config, why: str) -> None:
  """ConfigError (one line) if a task of `env.task` has no scripted expert to record."""
  for name in envs.resolve_tasks(config.env.task):
    if not envs.has_expert(name):
      raise config_check.ConfigError(
          f"{why} records the scripted expert, and task {name!r} has none; allowed: a task "
          "with an expert (TaskDefinition.expert), or demonstrations in sft.demos")


def recording_rounds(components: builders.Components, num_rows: int) -> int:
  """Rounds of `envs_per_group` rows that `record_demos` plays for `num_rows` per task."""
  num_tasks = len(envs.resolve_tasks(components.config.env.task))
  return -(-num_rows * num_tasks // components.envs_per_group)


def record_demos(components: builders.Components, rng: jax.Array, num_rows: int,
                 noise: float = 0.0,
                 on_round: Optional[Callable[[], None]] = None) -> dict[str, np.ndarray]:
  """Runs the task's scripted expert through the run's env and returns its steps.

  A row is `env.episode_length` steps of one env. The env resets itself when an episode ends
  and the expert goes on with the next one, so a row of a task the expert solves in a few
  steps holds several episodes, and every step is an expert decision worth imitating. Rows in
  which the expert ran out of time are dropped.

  In a run of several tasks (`env.task` a suite or a list) every task gets `num_rows` rows:
  recorded row g runs task g % num_tasks and is that task's row g // num_tasks, which is what
  `row` holds, so "the first n rows" is the first n of each task.

  Args:
    components: the run's components (env group 0 plays, `envs_per_group` rows at a time).
    rng: layouts and action noise.
    num_rows: rows to record (per task).
    noise: std of Gaussian noise added to the executed actions (the labels stay the expert's
      clean actions), so that the demonstrations also show how to recover from errors.
    on_round: called after each round of `envs_per_group` rows (a progress bar's `advance`).

  Returns:
    Flat steps (see `demo_steps`), plus `task` int32 [M] (the step's index into
    `envs.resolve_tasks(env.task)`).
  """
  env, model_config = components.env, components.model_config
  num_tasks = len(envs.resolve_tasks(components.config.env.task))
  tok = models.ActionTokenizer([-1.0] * model_config.action_dim,
                               [1.0] * model_config.action_dim, model_config.num_bins)

  @jax.jit
  def expert(state, key):
    action = jnp.clip(jax.vmap(env.expert_action)(state), -1.0, 1.0)
    tokens = tok.encode(jnp.reshape(action, action.shape[:-1] + (model_config.action_horizon, -1)))
    executed = jnp.clip(action + noise * jax.random.normal(key, action.shape), -1.0, 1.0)
    return jnp.reshape(tokens, action.shape), executed

  parts = []
  total = num_rows * num_tasks
  for r in range(recording_rounds(components, num_rows)):
    reset_rng, noise_rng = jax.random.split(jax.random.fold_in(rng, r))
    recorded = np.arange(components.envs_per_group) + r * components.envs_per_group
    task = recorded % num_tasks
    state = components.reset(reset_rng, jnp.asarray(task, jnp.int32), shared=False)
    steps = []

    def expert_step(state, t, noise_rng=noise_rng, steps=steps):
      tokens, executed = expert(state, jax.random.fold_in(noise_rng, t))
      nxt = components.env_step(state, executed)
      obs = {k: state.obs[k] for k in ("image", "text", "proprio")}
      steps.append(jax.device_get((obs, tokens, nxt.done, nxt.metrics["success"])))
      return nxt

    # A row is the whole episode limit of an auto-resetting env: every step is played.
    episodes.play(state, expert_step, env.config.episode_length, until_done=False)
    obs, tokens, done, success = jax.tree.map(lambda *x: np.stack(x, axis=1), *steps)
    parts.append(dict(obs, action_tokens=tokens,
                      row=np.broadcast_to((recorded // num_tasks)[:, None], done.shape),
                      task=np.broadcast_to(task[:, None], done.shape),
                      keep=(recorded < total)[:, None] & ~np.any((done > 0) & (success == 0),
                                                                 axis=1, keepdims=True)
                      & np.ones(done.shape, bool)))
    if on_round is not None:
      on_round()
  flat = {k: np.concatenate([p[k].reshape((-1,) + p[k].shape[2:]) for p in parts])
          for k in parts[0]}
  keep = flat.pop("keep")
  return _typed({k: v[keep] for k, v in flat.items()})


def _typed(steps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  types = {"image": np.uint8, "text": np.int32, "proprio": np.float32,
           "action_tokens": np.int32, "row": np.int32, "task": np.int32}
  return {k: np.ascontiguousarray(steps[k], types[k]) for k in types if k in steps}


def demo_steps(demos: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The valid steps of the successful episodes of `demos.load_demos` arrays, flattened.

  Returns:
    image [M, cameras, S, S, 3] uint8, text [M, L] int32, proprio [M, P] float32,
    action_tokens [M, H*D] int32 and row [M] int32 (the episode each step comes from).
  """
  episode, step = np.nonzero(demos["valid"] & demos["success"][:, None])
  return _typed({"image": demos["image"][episode, step], "text": demos["text"][episode],
                 "proprio": demos["proprio"][episode, step],
                 "action_tokens": demos["action_tokens"][episode, step], "row": episode})


def _check_demos(meta: dict, components: builders.Components) -> None:
  model_config = components.model_config
  want = {"image_size": model_config.image_size, "action_horizon": model_config.action_horizon,
          "action_dim": model_config.action_dim, "num_bins": model_config.num_bins,
          "max_text_len": model_config.max_text_len, "proprio_dim": model_config.proprio_dim,
          "task": components.config.env.task}
  for key, value in want.items():
    if meta.get(key) != value:
      raise config_check.ConfigError(
          f"sft.demos: the demonstrations have {key}={meta.get(key)!r} but this run needs "
          f"{value!r}; allowed: demonstrations written for the run's task and env settings")


def load_or_record(config, components: builders.Components, rng: jax.Array,
                   workdir: Optional[str] = None) -> dict[str, np.ndarray]:
  """The run's demonstration steps: from `sft.demos` if set, else recorded in-process.

  Recorded steps are kept in `<workdir>/demos.npz`, so a resumed run trains on the same ones
  without recording them again.

  Returns:
    Flat steps (see `demo_steps`) of `sft.episodes + sft.holdout_episodes` episodes (rows).
  """
  total = config.sft.episodes + config.sft.holdout_episodes
  if config.sft.demos:
    try:
      meta = demos_lib.read_meta(config.sft.demos)
    except (FileNotFoundError, ValueError) as e:
      raise config_check.ConfigError(f"sft.demos={config.sft.demos!r}: {e}") from None
    _check_demos(meta, components)
    if meta["num_episodes"] < total:
      raise config_check.ConfigError(
          f"sft.demos holds {meta['num_episodes']} episodes but sft.episodes + "
          f"sft.holdout_episodes = {total}; allowed: at most {meta['num_episodes']}")
    steps = demo_steps(demos_lib.load_demos(config.sft.demos))
    return {k: v[steps["row"] < total] for k, v in steps.items()}
  cache = os.path.join(workdir, DEMOS_FILE) if workdir and "://" not in workdir else None
  if cache and os.path.exists(cache):
    with np.load(cache, allow_pickle=False) as data:
      steps = {k: data[k] for k in data.files}
    if int(steps["rows"]) == total:
      del steps["rows"]
      return steps
  check_experts(config, "mode=sft")
  with console.phase(f"recording {total} rows of expert demonstrations per task",
                     recording_rounds(components, total), "rounds") as bar:
    steps = record_demos(components, jax.random.fold_in(rng, rng_streams.DEMOS), total,
                         config.sft.expert_noise, on_round=bar.advance)
  if cache and jax.process_index() == 0:
    np.savez_compressed(cache, rows=np.int32(total), **steps)
  return steps


def batches(steps: dict[str, np.ndarray], batch_size: int, seed: int):
  """Endless shuffled batches of `batch_size` steps (each epoch's short remainder dropped)."""
  rng = np.random.default_rng(seed)
  n = len(steps["row"])
  while True:
    order = rng.permutation(n)
    for start in range(0, n - batch_size + 1, batch_size):
      idx = order[start:start + batch_size]
      yield {k: v[idx] for k, v in steps.items()}


def to_batch(steps: dict[str, np.ndarray], model_config: models.VLAConfig) -> dict[str, Any]:
  tokens = steps["action_tokens"].reshape(-1, model_config.action_horizon, model_config.action_dim)
  return {"obs": {k: steps[k] for k in ("image", "text", "proprio")}, "tokens": tokens}
