"""Supervised warm-start (behaviour cloning): `--config.mode=sft`.

The policy learns the scripted expert's action tokens by cross-entropy, one gradient step per
iteration on a batch of demonstration steps (`demo_rows.load_or_record`: from `sft.demos`, a
directory written by `tools/write_demos.py`, or recorded in-process with the task's expert and
kept in `<workdir>/demos.npz` for a resumed run).
The `sft.holdout_episodes` episodes after the first `sft.episodes` are held out; their token
loss is logged as `sft/holdout_loss` (the demonstrated bins' NLL as `sft/holdout_nll`). (An
in-process "episode" is a row: `env.episode_length` expert steps of one env, several episodes
when the expert finishes early; see `demo_rows.record_demos`.)

Checkpoints are the RL trainer's (`Checkpointer` items `train_state`, `params`, `metadata`;
the same `TrainState` and optimizer structure), with `"mode": "sft"` in the metadata. An SFT
run resumes from its workdir like an RL run.

Handoff to RL: run RL in a new workdir with `--config.rl.init_from=<SFT workdir>`. When the
RL workdir has no checkpoint of its own, its policy parameters are restored from the newest
`params` item there (`checkpoints.restore_policy_params`); the optimizer state and the
iteration count start fresh. Once the RL run has checkpointed, it resumes from its own
checkpoints and `rl.init_from` is ignored.
"""

import functools
import os
import time
from typing import Callable, Optional

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dvla_jax import models
from dvla_jax.config import config_check
from dvla_jax.config import rng_streams
from dvla_jax.programs import builders
from dvla_jax.programs import evaluation
from dvla_jax.training import checkpoints
from dvla_jax.training import console
from dvla_jax.training import demo_rows
from dvla_jax.training import metrics as metrics_lib


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


def _train(config, workdir: str, ckpt: checkpoints.Checkpointer, progress_fn, components) -> dict:
  t0 = time.perf_counter()
  placement = builders.make_placement(config, planes=("learner",))
  components = components or builders.build(config)
  model_config = components.model_config
  rng = jax.random.key(config.seed)
  init_rng = jax.random.fold_in(rng, rng_streams.INIT)
  abstract = jax.eval_shape(components.init_train_state, init_rng)
  train_state = jax.jit(components.init_train_state,
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

  steps = demo_rows.load_or_record(config, components, rng, workdir)
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
  step_fn = jax.jit(functools.partial(sft_step, components.graphdef, optimizer,
                                      label_sigma=config.sft.label_sigma), donate_argnums=0)
  loss_fn = jax.jit(functools.partial(token_loss, components.graphdef,
                                      label_sigma=config.sft.label_sigma))
  eval_device = placement.sim_device(0)
  eval_comp = components.for_group(components.eval_group(separate=False))
  eval_rng = jax.device_put(jax.random.fold_in(rng, rng_streams.EVAL), eval_device)

  def holdout_metrics(params):
    sums = np.zeros(3)
    count = len(holdout["row"]) // holdout_batch
    for i in range(count):
      chunk = {k: v[i * holdout_batch:(i + 1) * holdout_batch] for k, v in holdout.items()}
      batch = placement.put_batch(demo_rows.to_batch(chunk, model_config), "learner")
      _, m = loss_fn(params, batch)
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
  stream = demo_rows.batches(train_steps, batch_size, seed=config.seed * 1_000_003 + start)
  window = time.perf_counter()
  with console.phase(f"SFT: behaviour cloning from step {start}", total - start) as bar:
    for step in range(start + 1, total + 1):
      batch = placement.put_batch(demo_rows.to_batch(next(stream), model_config), "learner")
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
