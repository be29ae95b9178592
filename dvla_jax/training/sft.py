"""Supervised warm-start (behaviour cloning): `--config.mode=sft`.

The policy learns the scripted expert's action tokens by cross-entropy, one gradient step per
iteration on a batch of demonstration steps. Demonstrations come from `sft.demos` (a directory
written by `tools/write_demos.py`, format `dvla_jax.training.demos`) or, when that is empty, are
recorded in-process by running the task's expert (`env.expert_action`) through the run's own
batched env, so nothing is compiled twice, and kept in `<workdir>/demos.npz` for a resumed run.
The `sft.holdout_episodes` episodes after the first `sft.episodes` are held out; their token
loss is logged as `sft/holdout_loss` (the demonstrated bins' NLL as `sft/holdout_nll`). (An
in-process "episode" is a row: `env.episode_length` expert steps of one env, several episodes
when the expert finishes early; see `record_demos`.)

Checkpoints are the RL trainer's (`Checkpointer` items `train_state`, `params`, `metadata`;
the same `TrainState` and optimizer structure), with `"mode": "sft"` in the metadata. An SFT
run resumes from its workdir like an RL run.

Handoff to RL: run RL in a new workdir with `--config.rl.init_from=<SFT workdir>`. When the
RL workdir has no checkpoint of its own, its policy parameters are restored from the newest
`params` item there (`restore_policy_params`); the optimizer state and the iteration count
start fresh. Once the RL run has checkpointed, it resumes from its own checkpoints and
`rl.init_from` is ignored.
"""

import functools
import os
import time
from typing import Any, Callable, Optional

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dvla_jax import envs
from dvla_jax import models
from dvla_jax import parallel
from dvla_jax.config import config_check
from dvla_jax.config import rng_streams
from dvla_jax.programs import builders
from dvla_jax.programs import evaluation
from dvla_jax.training import checkpoints
from dvla_jax.training import console
from dvla_jax.training import demos as demos_lib
from dvla_jax.training import metrics as metrics_lib

DEMOS_FILE = "demos.npz"


def token_loss(graphdef, params, batch, label_sigma: float = 0.0
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Cross-entropy of the demonstrated action tokens under the policy.

  With `label_sigma` > 0 the target of each token is a discretised Gaussian of that many bins
  around the demonstrated bin (ordinal label smoothing) instead of the bin alone. Few
  demonstrations otherwise teach single-bin spikes: the cloned policy's log-probs then swing
  wildly under small parameter changes, and sampling it explores nothing around the spike.
  `loss` is the cross-entropy against those targets; `nll` is always the demonstrated bin's.

  Args:
    graphdef: the model's static graph.
    params: policy parameters.
    batch: {"obs": {...}, "tokens": int [B, H, D]}.
    label_sigma: target width in bins (0 = the demonstrated bin alone).

  Returns:
    (mean loss, {"loss", "nll", "token_accuracy"}).
  """
  logits, _ = nnx.merge(graphdef, params)(batch["obs"])
  nll = -jnp.mean(models.token_log_probs(logits, batch["tokens"]))
  if label_sigma > 0:
    bins = jnp.arange(logits.shape[-1], dtype=jnp.float32)
    target = jax.nn.softmax(
        -0.5 * jnp.square((bins - batch["tokens"][..., None]) / label_sigma), axis=-1)
    loss = -jnp.mean(jnp.sum(target * jax.nn.log_softmax(logits, axis=-1), axis=-1))
  else:
    loss = nll
  accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == batch["tokens"])
  return loss, {"loss": loss, "nll": nll, "token_accuracy": accuracy}


def sft_step(graphdef, optimizer: optax.GradientTransformation, state, batch,
             label_sigma: float = 0.0):
  """One behaviour-cloning step (jit it donating `state`); returns (state, metrics)."""
  grad_fn = jax.value_and_grad(functools.partial(token_loss, graphdef, label_sigma=label_sigma),
                               has_aux=True)
  (_, metrics), grads = grad_fn(state.params, batch)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  metrics["grad_norm"] = optax.global_norm(grads)
  state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                        opt_state=opt_state)
  return state, {f"sft/{k}": v for k, v in metrics.items()}


def check_experts(config, why: str) -> None:
  """ConfigError (one line) if a task of `env.task` has no scripted expert to record."""
  for name in envs.resolve_tasks(config.env.task):
    if not envs.has_expert(name):
      raise config_check.ConfigError(
          f"{why} records the scripted expert, and task {name!r} has none; allowed: a task "
          "with an expert (TaskDefinition.expert), or demonstrations in sft.demos")


def recording_rounds(comp: builders.Components, num_rows: int) -> int:
  """Rounds of `envs_per_group` rows that `record_demos` plays for `num_rows` per task."""
  num_tasks = len(envs.resolve_tasks(comp.config.env.task))
  return -(-num_rows * num_tasks // comp.envs_per_group)


def record_demos(comp: builders.Components, rng: jax.Array, num_rows: int,
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
    comp: the run's components (env group 0 plays, `envs_per_group` rows at a time).
    rng: layouts and action noise.
    num_rows: rows to record (per task).
    noise: std of Gaussian noise added to the executed actions (the labels stay the expert's
      clean actions), so that the demonstrations also show how to recover from errors.
    on_round: called after each round of `envs_per_group` rows (a progress bar's `advance`).

  Returns:
    Flat steps (see `demo_steps`), plus `task` int32 [M] (the step's index into
    `envs.resolve_tasks(env.task)`).
  """
  env, mc = comp.env, comp.model_config
  num_tasks = len(envs.resolve_tasks(comp.config.env.task))
  tok = models.ActionTokenizer([-1.0] * mc.action_dim, [1.0] * mc.action_dim, mc.num_bins)

  @jax.jit
  def expert(state, key):
    action = jnp.clip(jax.vmap(env.expert_action)(state), -1.0, 1.0)
    tokens = tok.encode(jnp.reshape(action, action.shape[:-1] + (mc.action_horizon, -1)))
    executed = jnp.clip(action + noise * jax.random.normal(key, action.shape), -1.0, 1.0)
    return jnp.reshape(tokens, action.shape), executed

  parts = []
  total = num_rows * num_tasks
  for r in range(recording_rounds(comp, num_rows)):
    reset_rng, noise_rng = jax.random.split(jax.random.fold_in(rng, r))
    recorded = np.arange(comp.envs_per_group) + r * comp.envs_per_group
    task = recorded % num_tasks
    state = comp.reset(reset_rng, jnp.asarray(task, jnp.int32))
    steps = []
    for t in range(env.config.episode_length):
      tokens, executed = expert(state, jax.random.fold_in(noise_rng, t))
      obs = {k: state.obs[k] for k in ("image", "text", "proprio")}
      state = comp.env_step(state, executed)
      steps.append(jax.device_get((obs, tokens, state.done, state.metrics["success"])))
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


def _check_demos(meta: dict, comp: builders.Components) -> None:
  mc = comp.model_config
  want = {"image_size": mc.image_size, "action_horizon": mc.action_horizon,
          "action_dim": mc.action_dim, "num_bins": mc.num_bins,
          "max_text_len": mc.max_text_len, "proprio_dim": mc.proprio_dim,
          "task": comp.config.env.task}
  for key, value in want.items():
    if meta.get(key) != value:
      raise config_check.ConfigError(
          f"sft.demos: the demonstrations have {key}={meta.get(key)!r} but this run needs "
          f"{value!r}; allowed: demonstrations written for the run's task and env settings")


def load_or_record(config, comp: builders.Components, rng: jax.Array,
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
    _check_demos(meta, comp)
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
                     recording_rounds(comp, total), "rounds") as bar:
    steps = record_demos(comp, jax.random.fold_in(rng, rng_streams.DEMOS), total,
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


def to_batch(steps: dict[str, np.ndarray], mc: models.VLAConfig) -> dict[str, Any]:
  tokens = steps["action_tokens"].reshape(-1, mc.action_horizon, mc.action_dim)
  return {"obs": {k: steps[k] for k in ("image", "text", "proprio")}, "tokens": tokens}


def restore_policy_params(path: str, abstract_params: Any) -> Any:
  """The newest `params` item of a run (the warm start `rl.init_from` names).

  Args:
    path: a workdir (holding `checkpoints/`) or a checkpoint directory itself.
    abstract_params: target structure, shapes, dtypes and shardings of the params.

  Returns:
    The restored params.

  Raises:
    config_check.ConfigError: `path` holds no checkpoint (one line naming rl.init_from).
  """
  directory = os.path.join(path, "checkpoints")
  if not os.path.isdir(directory):
    directory = path
  if not os.path.isdir(directory):
    raise config_check.ConfigError(f"rl.init_from={path!r}: no such directory; allowed: the "
                                   "workdir of an earlier run, or '' (random init)")
  with checkpoints.Checkpointer(directory) as ckpt:
    step = ckpt.latest_step()
    if step is None:
      raise config_check.ConfigError(f"rl.init_from={path!r}: no checkpoint there; allowed: "
                                     "the workdir of an earlier run, or '' (random init)")
    logging.info("policy parameters from %s, step %d", directory, step)
    return ckpt.restore_params(step, abstract_params)


def train(config, workdir: str, progress_fn: Optional[Callable[[int, dict], None]] = None,
          components: Optional[builders.Components] = None) -> dict:
  """Behaviour cloning for `config.train.iterations` steps, resuming from `workdir`.

  Args:
    config: a validated run config with `mode="sft"`.
    workdir: run directory (checkpoints, metrics.jsonl, TensorBoard files).
    progress_fn: called with (step, metrics); defaults to a `MetricsWriter` on `workdir`.
    components: reuse components built by `builders.build` for an equivalent config.

  Returns:
    The last evaluation's metrics and held-out loss, plus the step reached under "step".
  """
  os.makedirs(workdir, exist_ok=True)
  writer = None
  if progress_fn is None:
    writer = metrics_lib.MetricsWriter(workdir, config.train.iterations,
                                       wandb_project=config.train.wandb_project,
                                       config=config.to_dict())
    progress_fn = writer.write
  ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"),
                                  max_to_keep=config.train.keep_checkpoints)
  try:
    return _train(config, workdir, ckpt, progress_fn, components)
  finally:
    ckpt.close()
    if writer is not None:
      writer.close()


def _placement(config) -> parallel.Placement:
  try:
    placement = parallel.Placement(parallel.make_plane_meshes(config.placement))
    preset = models.get_preset(config.model.preset)
    parallel.check_mesh_divides(preset, placement.mesh("learner"), where="placement.learner")
  except (parallel.PlacementError, parallel.MeshDivisionError) as e:
    raise config_check.ConfigError(str(e)) from None
  return placement


def _train(config, workdir: str, ckpt: checkpoints.Checkpointer, progress_fn, comp) -> dict:
  t0 = time.perf_counter()
  placement = _placement(config)
  comp = comp or builders.build(config)
  mc = comp.model_config
  rng = jax.random.key(config.seed)
  init_rng = jax.random.fold_in(rng, rng_streams.INIT)
  abstract = jax.eval_shape(comp.init_train_state, init_rng)
  train_state = jax.jit(comp.init_train_state,
                        out_shardings=placement.state_shardings(abstract, "learner"))(init_rng)
  latest = ckpt.latest_step()
  if latest is not None:
    checkpoints.check_compatible(ckpt, config)
    meta = ckpt.metadata(latest)
    if meta.get("mode", "rl") != "sft":
      raise config_check.ConfigError(
          f"the workdir holds an RL checkpoint (step {latest}); allowed: an SFT workdir, or "
          "a new one (RL starts from SFT with rl.init_from)")
    train_state, _ = ckpt.restore(latest, train_state)
    logging.info("resumed SFT from %s at step %d", ckpt.directory, latest)
  start, total = int(train_state.step), config.train.iterations

  steps = load_or_record(config, comp, rng, workdir)
  n_train = config.sft.episodes
  held_out = steps["row"] >= n_train
  train_steps = {k: v[~held_out] for k, v in steps.items()}
  holdout = {k: v[held_out] for k, v in steps.items()}
  logging.info("demonstrations: %d training and %d held-out steps; set-up took %.1fs",
               len(train_steps["row"]), len(holdout["row"]), time.perf_counter() - t0)
  batch_size = config.sft.batch_size
  if len(train_steps["row"]) < batch_size or not len(holdout["row"]):
    raise config_check.ConfigError(
        f"sft.batch_size={batch_size} with {len(train_steps['row'])} training and "
        f"{len(holdout['row'])} held-out demonstration steps; allowed: more sft.episodes and "
        "sft.holdout_episodes, or a smaller sft.batch_size")
  holdout_batch = min(batch_size, len(holdout["row"]))

  optimizer = builders.make_optimizer(ml_collections.ConfigDict(
      {"lr": config.sft.lr, "max_grad_norm": config.rl.max_grad_norm}))
  step_fn = jax.jit(functools.partial(sft_step, comp.graphdef, optimizer,
                                      label_sigma=config.sft.label_sigma), donate_argnums=0)
  loss_fn = jax.jit(functools.partial(token_loss, comp.graphdef,
                                      label_sigma=config.sft.label_sigma))
  eval_device = placement.sim_device(0)
  eval_comp = comp.for_group(comp.eval_group(separate=False))
  eval_rng = jax.device_put(jax.random.fold_in(rng, rng_streams.EVAL), eval_device)

  def holdout_metrics(params):
    sums = np.zeros(3)
    count = len(holdout["row"]) // holdout_batch
    for i in range(count):
      chunk = {k: v[i * holdout_batch:(i + 1) * holdout_batch] for k, v in holdout.items()}
      _, m = loss_fn(params, placement.put_batch(to_batch(chunk, mc), "learner"))
      sums += np.array([float(m["loss"]), float(m["nll"]), float(m["token_accuracy"])])
    # The loss is the training objective's (smoothed targets with sft.label_sigma); the NLL is
    # always the demonstrated bins'.
    return {"sft/holdout_loss": float(sums[0] / count),
            "sft/holdout_nll": float(sums[1] / count),
            "sft/holdout_accuracy": float(sums[2] / count)}

  def evaluate(step):
    params = train_state.params
    result = holdout_metrics(params)
    episodes = config.train.eval_episodes
    with console.phase(f"evaluation at step {step}: {episodes} episodes, sampled and argmax",
                       evaluation.num_rounds(episodes, eval_comp.config.env.num_envs),
                       "rounds") as bar:
      result.update(evaluation.evaluate(eval_comp, jax.device_put(params, eval_device),
                                        eval_rng, episodes, on_round=bar.advance))
    progress_fn(step, result)
    return result

  def save(step):
    ckpt.save(step, train_state, train_state.params,
              {"mode": "sft", "env_steps": 0, "config": config, "iteration": step,
               "demo_episodes": n_train})

  result = evaluate(0) if start == 0 else {}
  stream = batches(train_steps, batch_size, seed=config.seed * 1_000_003 + start)
  window = time.perf_counter()
  with console.phase(f"SFT: behaviour cloning from step {start}", total - start) as bar:
    for step in range(start + 1, total + 1):
      batch = placement.put_batch(to_batch(next(stream), mc), "learner")
      train_state, metrics = step_fn(train_state, batch)
      bar.advance()
      if step % config.train.log_every == 0 or step == total:
        values = metrics_lib.device_get_metrics(metrics)
        now = time.perf_counter()
        values["sft/samples_per_s"] = (config.train.log_every * batch_size /
                                       max(now - window, 1e-9))
        window = now
        progress_fn(step, values)
      if step % config.train.eval_every == 0 or step == total:
        result = evaluate(step)
      if step % config.train.checkpoint_every == 0 or step == total:
        save(step)
  if start >= total:
    result = evaluate(start)
  return {"step": max(start, total), **result}
