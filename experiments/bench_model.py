r"""VLA throughput: forward and train-step samples/s and tokens/s; TFLOP/s against peak on GPU.

    PYTHONPATH=. python experiments/bench_model.py --out=/tmp/bench_model.json
    PYTHONPATH=. python experiments/bench_model.py --quick --out=/tmp/bench_model_quick.json

For each preset the policy is built on one device, and two jitted programs are timed after a
warm-up call (the compile): the forward pass (action logits and value of a batch of fake
observations) and one train step (forward, action-token cross-entropy plus a value loss,
gradients, a clipped Adam update, params and optimizer state donated). A token is one position
of the trunk sequence (image patches, text, proprio, action and value queries), so tokens/s is
samples/s x `seq_len`. FLOPs per call come from XLA's cost analysis of the compiled program.

CPU: `tiny` and `small` in float32. GPU (when JAX's default backend is one): also `base` and
`1b` in bfloat16 compute with float32 master weights, with achieved TFLOP/s as a fraction of
the device's dense bf16 peak (looked up from the device kind; null when unknown). Without a
GPU the GPU rows are skipped with a note in the JSON.
"""

import json
import os
import platform
import statistics
import time
from typing import Any, Optional, Sequence

from absl import app
from absl import flags
from flax import nnx
import jax
import jax.numpy as jnp
import optax

from dvla_jax import models

_OUT = flags.DEFINE_string("out", None, "JSON output file.")
_QUICK = flags.DEFINE_bool("quick", False, "Reduced run (fewer, shorter timings): < 3 min.")
_CPU_PRESETS = flags.DEFINE_list("cpu_presets", ["tiny", "small"], "Presets timed everywhere.")
_GPU_PRESETS = flags.DEFINE_list("gpu_presets", ["base", "1b"], "Presets timed on a GPU only.")
_CPU_BATCH = flags.DEFINE_integer("cpu_batch", 32, "Batch of the CPU presets.")
_GPU_BATCH = flags.DEFINE_integer("gpu_batch", 64, "Batch of the GPU presets.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats (the median is reported).")
_ITERS = flags.DEFINE_integer("iters", 10, "Calls per timed repeat.")
flags.mark_flag_as_required("out")

# Dense bf16 peak FLOP/s by device kind substring (vendor datasheets, SXM parts).
_PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12,
              "V100": 125e12}


def _peak(kind: str) -> Optional[float]:
  return next((v for k, v in _PEAK_BF16.items() if k.lower() in kind.lower()), None)


def _flops(compiled) -> Optional[float]:
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  # Not every backend implements it.
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost["flops"]) if cost and "flops" in cost else None


def _time(fn, args, repeats: int, iters: int, donated: bool) -> tuple[float, float]:
  """Returns (compile+first call seconds, median seconds per call)."""
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(iters):
      if donated:  # The train step consumes its state: feed it its own output.
        out = fn(out[0], out[1], *args[2:])
      else:
        out = fn(*args)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - t0) / iters)
  return first, statistics.median(times)


def _bench_preset(name: str, batch: int, dtype: str, repeats: int, iters: int
                  ) -> dict[str, Any]:
  config = models.get_preset(name, dtype=dtype)
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: models.VLA(config, rngs=nnx.Rngs(0))))
  params = jax.jit(lambda: nnx.split(models.VLA(config, rngs=nnx.Rngs(0)))[1])()
  optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-4))
  opt_state = jax.jit(optimizer.init)(params)
  obs = config.fake_obs(batch)
  tokens = jax.random.randint(jax.random.key(1), (batch, config.action_horizon,
                                                  config.action_dim), 0, config.num_bins)
  returns = jnp.zeros((batch,), jnp.float32)

  def forward(params, obs):
    return nnx.merge(graphdef, params)(obs)

  def train_step(params, opt_state, obs, tokens, returns):
    def loss_fn(p):
      logits, value = nnx.merge(graphdef, p)(obs)
      ce = -jnp.mean(models.token_log_probs(logits, tokens))
      return ce + jnp.mean(jnp.square(value - returns))

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  fwd = jax.jit(forward).lower(params, obs).compile()
  step = jax.jit(train_step, donate_argnums=(0, 1)).lower(
      params, opt_state, obs, tokens, returns).compile()
  row = {"preset": name, "dtype": dtype, "batch": batch, "seq_len": config.seq_len,
         "params": sum(int(x.size) for x in jax.tree.leaves(abstract))}
  kind = jax.devices()[0].device_kind
  peak = _peak(kind) if jax.default_backend() == "gpu" else None
  for label, fn, args, donated in (("forward", fwd, (params, obs), False),
                                   ("train", step, (params, opt_state, obs, tokens, returns),
                                    True)):
    first, seconds = _time(fn, args, repeats, iters, donated)
    flops = _flops(fn)
    row[label] = {
        "first_call_s": first, "step_s": seconds, "samples_per_s": batch / seconds,
        "tokens_per_s": batch * config.seq_len / seconds, "flops_per_step": flops,
        "tflops_per_s": flops / seconds / 1e12 if flops else None,
        "fraction_of_peak": flops / seconds / peak if flops and peak else None,
    }
    print(f"{name:5s} {label:7s} batch {batch}: {batch / seconds:10.1f} samples/s  "
          f"{batch * config.seq_len / seconds:12.0f} tokens/s"
          + (f"  {flops / seconds / 1e12:.2f} TFLOP/s" if flops else ""), flush=True)
  return row


def _markdown(rows: list[dict[str, Any]]) -> str:
  lines = ["| preset | dtype | batch | program | samples/s | tokens/s | TFLOP/s | of peak |",
           "|---|---|---:|---|---:|---:|---:|---:|"]
  for r in rows:
    for label in ("forward", "train"):
      m = r[label]
      tf = f"{m['tflops_per_s']:.3f}" if m["tflops_per_s"] is not None else "-"
      frac = f"{100 * m['fraction_of_peak']:.1f}%" if m["fraction_of_peak"] else "-"
      lines.append(f"| {r['preset']} | {r['dtype']} | {r['batch']} | {label} | "
                   f"{m['samples_per_s']:,.1f} | {m['tokens_per_s']:,.0f} | {tf} | {frac} |")
  return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
  del argv
  repeats, iters = (3, 3) if _QUICK.value else (_REPEATS.value, _ITERS.value)
  cpu_batch = 8 if _QUICK.value else _CPU_BATCH.value
  on_gpu = jax.default_backend() == "gpu"
  rows = [_bench_preset(p, cpu_batch, "float32", repeats, iters) for p in _CPU_PRESETS.value]
  gpu_note = None
  if on_gpu:
    rows += [_bench_preset(p, _GPU_BATCH.value, "bfloat16", repeats, iters)
             for p in _GPU_PRESETS.value]
  else:
    gpu_note = (f"skipped {', '.join(_GPU_PRESETS.value)}: JAX's default backend is "
                f"{jax.default_backend()}, not a GPU (TFLOP/s against peak needs one)")
    print(gpu_note)
  kind = jax.devices()[0].device_kind
  table = _markdown(rows)
  result = {
      "quick": _QUICK.value, "jax_backend": jax.default_backend(), "jax_device": kind,
      "peak_bf16_flops": _peak(kind) if on_gpu else None, "cpu_count": os.cpu_count(),
      "machine": platform.machine(), "repeats": repeats, "iters": iters, "rows": rows,
      "gpu_note": gpu_note, "table": table,
  }
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, "w") as f:
    json.dump(result, f, indent=1)
  print(table)


if __name__ == "__main__":
  app.run(main)
