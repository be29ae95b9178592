r"""Env throughput: MJX steps/s with and without rendering, against plain MuJoCo on CPU threads.

    PYTHONPATH=. python experiments/bench_envs.py --out=/tmp/bench_envs.json
    PYTHONPATH=. python experiments/bench_envs.py --quick --out=/tmp/bench_envs_quick.json

For each batch size the task env is built for that many worlds, wrapped for training (brax's
vmap, episode and auto-reset wrappers) and its jitted step timed on random action chunks, once
with the batch renderer off and once drawing `--image_size` pixel images. The reference is the
same scene (same model, same reset layouts) stepped open-loop by `mujoco.rollout` on
`--threads` CPU threads, with a random-walk gripper target like the env's.

Units: an env step is one policy step, i.e. one action chunk of H control steps of `substeps`
physics steps each; `physics_steps_per_s` multiplies by H * substeps. JAX runs on its default
backend (the GPU when there is one; `JAX_PLATFORMS=cpu` forces the CPU); `mujoco.rollout`
always runs on the CPU. Writes JSON (rows plus a markdown table) and prints the table.
"""

import json
import os
import platform
import time
from typing import Any, Sequence

from absl import app
from absl import flags
import jax
import mujoco
from mujoco import rollout
import numpy as np

from dvla_jax import envs

_OUT = flags.DEFINE_string("out", None, "JSON output file.")
_QUICK = flags.DEFINE_bool("quick", False, "Reduced run (batch 16 and 64, few steps): < 3 min.")
_TASK = flags.DEFINE_string("task", "touch_cube", "Registered task to step.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["16", "64", "256", "1024"],
                                 "Batch sizes of the full run.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed env steps per measurement (full run).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 32, "Rendered resolution in pixels.")
_IMPL = flags.DEFINE_enum("impl", "warp", ["warp", "jax"], "MJX implementation.")
_THREADS = flags.DEFINE_integer("threads", 0, "mujoco.rollout threads; 0 = all CPU cores.")
flags.mark_flag_as_required("out")


def _time_env(task: str, batch: int, render: bool, steps: int) -> tuple[dict[str, Any], Any, Any]:
  """Times the jitted training step of `task` at `batch` worlds; returns (row, env, qpos0)."""
  config = envs.EnvConfig(num_worlds=batch, image_size=_IMAGE_SIZE.value, impl=_IMPL.value,
                          render=render)
  env = envs.make(task, config)
  venv = envs.wrap_for_training(env)
  reset = jax.jit(venv.reset)
  step = jax.jit(venv.step)
  t0 = time.perf_counter()
  state = reset(jax.random.split(jax.random.PRNGKey(0), batch))
  qpos0 = np.asarray(jax.device_get(state.pipeline_state.qpos))
  actions = jax.random.uniform(jax.random.PRNGKey(1), (steps + 1, batch, env.action_size),
                               minval=-1.0, maxval=1.0)
  state = jax.block_until_ready(step(state, actions[0]))
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for i in range(1, steps + 1):
    state = step(state, actions[i])
  jax.block_until_ready(state)
  seconds = time.perf_counter() - t0
  per_env_step = env.config.action_horizon * env.config.substeps
  row = {
      "backend": f"mjx-{_IMPL.value}", "device": jax.devices()[0].platform,
      "render": render, "batch": batch, "steps": steps,
      "env_steps_per_s": batch * steps / seconds,
      "physics_steps_per_s": batch * steps * per_env_step / seconds,
      "compile_s": compile_s,
  }
  return row, env, qpos0


def _time_rollout(env, qpos0: np.ndarray, steps: int, threads: int) -> dict[str, Any]:
  """Times `mujoco.rollout` on the env's model from the env's reset layouts."""
  model = env.mj_model
  batch = qpos0.shape[0]
  h, substeps = env.config.action_horizon, env.config.substeps
  spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
  data = mujoco.MjData(model)
  mujoco.mj_resetDataKeyframe(model, data, model.key("home").id)
  home_ctrl = data.ctrl.copy()
  states = np.empty((batch, mujoco.mj_stateSize(model, spec)))
  for i in range(batch):
    data.qpos[:] = qpos0[i]
    mujoco.mj_forward(model, data)
    mujoco.mj_getState(model, data, states[i], spec)
  # A random walk of the actuator targets, one move per control step, held for its substeps.
  rng = np.random.default_rng(0)
  moves = rng.uniform(-1, 1, (batch, steps * h, model.nu)) * env.config.max_delta
  lo, hi = model.actuator_ctrlrange[:, 0], model.actuator_ctrlrange[:, 1]
  ctrl = np.clip(home_ctrl + np.cumsum(moves, axis=1), lo, hi)
  ctrl = np.repeat(ctrl, substeps, axis=1)
  datas = [mujoco.MjData(model) for _ in range(threads)]
  rollout.rollout(model, datas, states, ctrl[:, :substeps])  # Warm the thread pool.
  t0 = time.perf_counter()
  rollout.rollout(model, datas, states, ctrl)
  seconds = time.perf_counter() - t0
  return {
      "backend": "mujoco.rollout", "device": f"cpu x{threads} threads", "render": False,
      "batch": batch, "steps": steps, "env_steps_per_s": batch * steps / seconds,
      "physics_steps_per_s": batch * steps * h * substeps / seconds, "compile_s": 0.0,
  }


def _markdown(rows: list[dict[str, Any]]) -> str:
  lines = ["| backend | device | render | batch | env steps/s | physics steps/s | compile s |",
           "|---|---|---|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['backend']} | {r['device']} | {'yes' if r['render'] else 'no'} | "
                 f"{r['batch']} | {r['env_steps_per_s']:,.0f} | {r['physics_steps_per_s']:,.0f} | "
                 f"{r['compile_s']:.1f} |")
  return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
  del argv
  batches = [16, 64] if _QUICK.value else [int(b) for b in _BATCH_SIZES.value]
  steps = 10 if _QUICK.value else _STEPS.value
  threads = _THREADS.value or os.cpu_count() or 1
  rows = []
  for batch in batches:
    env = qpos0 = None
    for render in (False, True):
      if render and _IMPL.value != "warp":
        continue  # Only MJX Warp renders.
      row, env, qpos0 = _time_env(_TASK.value, batch, render, steps)
      rows.append(row)
      print(f"batch {batch} render={render}: {row['env_steps_per_s']:,.0f} env steps/s",
            flush=True)
    rows.append(_time_rollout(env, qpos0, steps, threads))
  table = _markdown(rows)
  result = {
      "task": _TASK.value, "quick": _QUICK.value, "image_size": _IMAGE_SIZE.value,
      "impl": _IMPL.value, "jax_backend": jax.default_backend(),
      "jax_device": str(jax.devices()[0].device_kind), "cpu_count": os.cpu_count(),
      "machine": platform.machine(), "rows": rows, "table": table,
  }
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, "w") as f:
    json.dump(result, f, indent=1)
  print(table)


if __name__ == "__main__":
  app.run(main)
