"""Scripted-expert demonstrations on disk, for the supervised warm-start before RL.

`write_demos` runs a task's scripted expert (`env.expert_action`, privileged state) in
`num_worlds` parallel worlds and writes what the policy would have seen and done;
`load_demos` reads it back and `iterate_batches` serves shuffled (observation, action) steps.

Format (a directory, no pickle anywhere):

  meta.json         format name and version, task, seed, sizes, action tokenizer settings
                    (`action_low`, `action_high`, `num_bins`), success rate, the shard list
                    and, per field, its dtype and per-episode shape.
  shard_00000.npz   one batch of episodes (up to `num_worlds`), `numpy.savez_compressed`;
  shard_00001.npz   every array has the episode as its first axis, N below. Read with
  ...               `numpy.load(f, allow_pickle=False)`.

Fields of a shard (T = episode_length policy steps, H*D = action chunk size):

  image          uint8   [N, T, cameras, S, S, 3]  observation before step t
  proprio        float32 [N, T, P]                 observation before step t
  text           int32   [N, L]                    instruction tokens (byte tokenizer)
  instruction    <U      [N]                       instruction text (fixed-width unicode)
  actions        float32 [N, T, H*D]               expert action chunk in [-1, 1]
  action_tokens  int32   [N, T, H*D]               its 256-bin tokens (`ActionTokenizer`)
  rewards        float32 [N, T]                    reward of step t
  dones          bool    [N, T]                    episode ended at step t
  valid          bool    [N, T]                    step t happened (no earlier done)
  length         int32   [N]                       number of valid steps
  success        bool    [N]                       the episode succeeded

Steps after the first done are recorded but not `valid`; `iterate_batches` skips them.
"""

import dataclasses
import json
import math
import os
from typing import Any, Iterator

from brax.envs.wrappers import training as brax_wrappers
import jax
import jax.numpy as jnp
import numpy as np

from dvla_jax.envs import episodes
from dvla_jax.envs import mjx_env
from dvla_jax.envs import registry
from dvla_jax.models import action_tokens
from dvla_jax.models import tokenizer
from dvla_jax.programs import observations

FORMAT = "dvla_jax.demos"
VERSION = 1
NUM_BINS = action_tokens.NUM_BINS
_STEP_FIELDS = ("image", "proprio", "actions", "action_tokens", "rewards", "dones", "valid")
_EPISODE_FIELDS = ("text", "instruction", "length", "success")
FIELDS = _STEP_FIELDS + _EPISODE_FIELDS


def _expert_step_fn(venv, env: mjx_env.TabletopEnv, tok: action_tokens.ActionTokenizer):
  """A jitted `(batched state) -> (next state, record of the step)` of the scripted expert
  acting in `venv` (the batched `env`)."""
  expert = jax.vmap(env.expert_action)
  h, d = env.config.action_horizon, env.action_dim

  @jax.jit
  def step(state):
    action = jnp.clip(expert(state), -1.0, 1.0)
    nxt = venv.step(state, action)
    tokens = tok.encode(jnp.reshape(action, action.shape[:-1] + (h, d)))
    record = {"image": state.obs["image"], "proprio": state.obs["proprio"],
              "actions": action, "action_tokens": jnp.reshape(tokens, action.shape),
              "rewards": nxt.reward, "dones": nxt.done > 0}
    return nxt, record

  return step


def _record_batch(reset, step, keys: jax.Array, limit: int):
  """One batch of expert episodes through `episodes.play`, every one of `limit` steps
  recorded (steps after an episode's end are kept but not `valid`).

  Returns:
    (text tokens [B, L], per-step records [B, T, ...], the episodes' `Totals`).
  """
  state = reset(keys)
  records = []

  def expert_step(state, t):
    del t
    nxt, record = step(state)
    records.append(record)
    return nxt

  _, totals = episodes.play(state, expert_step, limit, until_done=False)
  stacked = jax.tree.map(lambda *x: np.stack(x, axis=1), *jax.device_get(records))
  return np.asarray(state.obs["text"]), stacked, jax.device_get(totals)


def _episode_arrays(text: np.ndarray, records: dict[str, np.ndarray],
                    totals: episodes.Totals) -> dict[str, np.ndarray]:
  """A shard's fields; an episode's length and success are `episodes.play`'s."""
  length = np.asarray(totals.length).astype(np.int32)
  out = dict(records)
  out["valid"] = np.arange(records["dones"].shape[1])[None, :] < length[:, None]
  out["length"] = length
  out["success"] = np.asarray(totals.success) > 0
  out["text"] = text.astype(np.int32)
  out["instruction"] = np.array([tokenizer.decode(t) for t in text])
  out["rewards"] = out["rewards"].astype(np.float32)
  out["proprio"] = out["proprio"].astype(np.float32)
  out["actions"] = out["actions"].astype(np.float32)
  out["action_tokens"] = out["action_tokens"].astype(np.int32)
  return out


def write_demos(path: str, task: str, num_episodes: int, num_worlds: int = 16, seed: int = 0,
                env_config: mjx_env.EnvConfig | None = None) -> dict[str, Any]:
  """Runs the scripted expert of `task` and writes `num_episodes` episodes to `path`.

  Args:
    path: output directory (created; existing shards of the same names are overwritten).
    task: registered task name.
    num_episodes: episodes to record (>= 1).
    num_worlds: episodes run in parallel (one shard each batch).
    seed: layouts and instructions come from `jax.random.PRNGKey(seed)`.
    env_config: env settings (image size, episode length, ...); `num_worlds` overrides its
      batch size. Defaults to `EnvConfig()`.

  Returns:
    The metadata written to `meta.json`.
  """
  if num_episodes < 1:
    raise ValueError(f"num_episodes={num_episodes}; allowed: >= 1")
  if num_worlds < 1:
    raise ValueError(f"num_worlds={num_worlds}; allowed: >= 1")
  registry.check_task(task)
  config = env_config or mjx_env.EnvConfig()
  config = dataclasses.replace(config, num_worlds=num_worlds)
  env = registry.make(task, config)
  config = env.config  # Task defaults filled in.
  low, high = [-1.0] * env.action_dim, [1.0] * env.action_dim
  venv = observations.InstructionTokens(brax_wrappers.VmapWrapper(env),
                                       tokenizer.text_len(env.instruction_table()))
  reset = jax.jit(venv.reset)
  step = _expert_step_fn(venv, env, action_tokens.ActionTokenizer(low, high, NUM_BINS))
  os.makedirs(path, exist_ok=True)
  shards, fields, successes = [], {}, []
  for i in range(math.ceil(num_episodes / num_worlds)):
    keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), i), num_worlds)
    arrays = _episode_arrays(*_record_batch(reset, step, keys, config.episode_length))
    keep = min(num_worlds, num_episodes - i * num_worlds)
    arrays = {k: v[:keep] for k, v in arrays.items()}
    name = f"shard_{i:05d}.npz"
    np.savez_compressed(os.path.join(path, name), **arrays)
    shards.append({"file": name, "episodes": keep})
    successes.append(arrays["success"])
    fields = {k: {"dtype": str(v.dtype), "shape": list(v.shape[1:])} for k, v in arrays.items()}
  meta = {
      "format": FORMAT, "version": VERSION, "task": task, "seed": seed,
      "num_episodes": num_episodes, "episode_length": config.episode_length,
      "action_horizon": config.action_horizon, "action_dim": env.action_dim,
      "num_bins": NUM_BINS, "action_low": low, "action_high": high,
      "image_size": config.image_size, "cameras": list(config.cameras),
      "max_text_len": tokenizer.text_len(env.instruction_table()), "proprio_dim": env.proprio_dim,
      "success_rate": float(np.concatenate(successes).mean()), "shards": shards,
      "fields": fields,
  }
  with open(os.path.join(path, "meta.json"), "w") as f:
    json.dump(meta, f, indent=1)
  return meta


def read_meta(path: str) -> dict[str, Any]:
  """Reads and checks `meta.json` of a demonstration directory."""
  meta_path = os.path.join(path, "meta.json")
  if not os.path.exists(meta_path):
    raise FileNotFoundError(f"no demonstrations at {path!r} (missing meta.json)")
  with open(meta_path) as f:
    meta = json.load(f)
  if meta.get("format") != FORMAT or meta.get("version") != VERSION:
    raise ValueError(f"{meta_path}: format {meta.get('format')!r} v{meta.get('version')}; "
                     f"expected {FORMAT!r} v{VERSION}")
  return meta


def load_demos(path: str) -> dict[str, np.ndarray]:
  """Reads every shard of a demonstration directory into one dict of arrays.

  Args:
    path: a directory written by `write_demos`.

  Returns:
    The fields listed in the module docstring, episodes concatenated along axis 0.
  """
  meta = read_meta(path)
  parts = {k: [] for k in FIELDS}
  for shard in meta["shards"]:
    with np.load(os.path.join(path, shard["file"]), allow_pickle=False) as data:
      for k in FIELDS:
        parts[k].append(data[k])
  out = {k: np.concatenate(v, axis=0) for k, v in parts.items()}
  for k, spec in meta["fields"].items():
    if list(out[k].shape[1:]) != spec["shape"]:
      raise ValueError(f"{path}: field {k} has shape {out[k].shape[1:]}, meta says "
                       f"{spec['shape']}")
  return out


def iterate_batches(demos: dict[str, np.ndarray], batch_size: int, seed: int = 0,
                    num_epochs: int | None = 1, successful_only: bool = True,
                    ) -> Iterator[dict[str, np.ndarray]]:
  """Shuffled batches of single steps for behaviour cloning.

  Each batch holds `batch_size` valid steps (the last, short batch of an epoch is dropped):
  `image` [B, cameras, S, S, 3] uint8, `text` [B, L] int32, `proprio` [B, P],
  `actions` [B, H*D] and `action_tokens` [B, H*D].

  Args:
    demos: arrays from `load_demos`.
    batch_size: steps per batch.
    seed: shuffling seed.
    num_epochs: passes over the steps; None repeats forever.
    successful_only: use only the episodes that succeeded.

  Yields:
    Batches as dicts of numpy arrays.
  """
  mask = demos["valid"].copy()
  if successful_only:
    mask &= demos["success"][:, None]
  episode, step = np.nonzero(mask)
  if len(episode) < batch_size:
    raise ValueError(f"{len(episode)} usable steps, fewer than batch_size={batch_size}")
  rng = np.random.default_rng(seed)
  epoch = 0
  while num_epochs is None or epoch < num_epochs:
    order = rng.permutation(len(episode))
    for start in range(0, len(order) - batch_size + 1, batch_size):
      e, t = episode[order[start:start + batch_size]], step[order[start:start + batch_size]]
      yield {"image": demos["image"][e, t], "text": demos["text"][e],
             "proprio": demos["proprio"][e, t], "actions": demos["actions"][e, t],
             "action_tokens": demos["action_tokens"][e, t]}
    epoch += 1
