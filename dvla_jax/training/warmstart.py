"""In-run warm start: a short behaviour-cloning phase before RL, in the same run and workdir.

ARCHITECTURE's recipe is "scripted experts produce demonstrations, a short supervised phase,
then RL raises success". `--config.mode=sft` plus `rl.init_from` does it in two runs;
`rl.warmstart_steps > 0` does it in one: a fresh RL run records the task's expert through its
own env (`demo_rows.record_demos`), takes that many `sft.sft_step` gradient steps on the
demonstrated action tokens, and starts PPO from the cloned policy with a fresh optimizer. The
evaluation at iteration 0 is of the cloned policy, taken after the warm start, so the final
evaluation against it shows what RL itself added.
"""

import functools

from absl import logging
import jax
import ml_collections

from dvla_jax.config import config_check
from dvla_jax.config import rng_streams
from dvla_jax.programs import builders
from dvla_jax.programs import steps as steps_lib
from dvla_jax.training import console
from dvla_jax.training import demo_rows
from dvla_jax.training import sft


def behaviour_clone(config, components: builders.Components, placement, params, rng: jax.Array,
                    progress_fn) -> object:
  """Clones the task's scripted expert into `params`; returns the new params.

  Args:
    config: the run config (`rl.warmstart_steps`, `sft.episodes`, `sft.batch_size`, `sft.lr`,
      `sft.expert_noise`).
    components: the run's components.
    placement: the run's placement (batches go to the learner plane).
    params: the initial policy parameters.
    rng: the run's base key.
    progress_fn: receives `warmstart/*` metrics at iteration 0.

  Returns:
    The cloned policy parameters.
  """
  rng = jax.random.fold_in(rng, rng_streams.WARMSTART)
  demo_rows.check_experts(config, f"rl.warmstart_steps={config.rl.warmstart_steps}")
  rounds = demo_rows.recording_rounds(components, config.sft.episodes)
  with console.phase(f"warm start: recording {config.sft.episodes} rows of expert "
                     "demonstrations per task", rounds, "rounds") as bar:
    demos = demo_rows.record_demos(components, rng, config.sft.episodes, config.sft.expert_noise,
                             on_round=bar.advance)
  n = len(demos["row"])
  if n == 0:
    raise config_check.ConfigError(
        f"rl.warmstart_steps={config.rl.warmstart_steps}: the scripted expert finished no "
        f"episode of {config.env.task!r} within {components.env.config.episode_length} steps; "
        "allowed: a longer episode, or rl.warmstart_steps=0")
  batch_size = min(config.sft.batch_size, n)
  optimizer = builders.make_optimizer(ml_collections.ConfigDict(
      {"lr": config.sft.lr, "max_grad_norm": config.rl.max_grad_norm}))
  step_fn = jax.jit(functools.partial(sft.sft_step, components.graphdef, optimizer,
                                      label_sigma=config.sft.label_sigma),
                    donate_argnums=0)
  state = steps_lib.TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                               opt_state=optimizer.init(params))
  stream = demo_rows.batches(demos, batch_size, seed=config.seed)
  total = config.rl.warmstart_steps
  log_every = max(1, total // 4)
  with console.phase(f"warm start: behaviour cloning on {n} expert steps", total) as bar:
    for i in range(total):
      batch = demo_rows.to_batch(next(stream), components.model_config)
      state, metrics = step_fn(state, placement.put_batch(batch, "learner"))
      bar.advance()
      if (i + 1) % log_every == 0 or i + 1 == total:
        values = {k.replace("sft/", "warmstart/"): float(v)
                  for k, v in jax.device_get(metrics).items()}
        values["warmstart/step"] = i + 1
        progress_fn(0, values)
  logging.info("warm start: %d behaviour-cloning steps on %d expert steps", total, n)
  return state.params
