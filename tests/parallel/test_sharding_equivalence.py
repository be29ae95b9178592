"""FSDP, TP and FSDP x TP on 8 fake CPU devices compute what one device computes.

The sharded runs happen in one subprocess (fake devices must be configured before JAX
starts); it prints, per mesh, the largest relative error of the forward outputs and of the
gradients against the single-device run, and the layout the parameters actually had, so a
mesh that silently replicated everything would fail the layout checks.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import pytest

from dvla_jax import models
from dvla_jax import parallel

# (data, fsdp, tensor) meshes of 8 devices: FSDP, TP, FSDP x TP, and all three axes.
MESHES = {
    "fsdp8": (1, 8, 1),
    "tensor8": (1, 1, 8),
    "fsdp2_tensor4": (1, 2, 4),
    "data2_fsdp2_tensor2": (2, 2, 2),
}

# Every dimension a rule splits divides 8: width 64 over fsdp, 8 heads and mlp 128 over tensor.
# One trunk block and one ViT block cover every parameter kind; more blocks only add compile
# time.
CONFIG = dict(width=64, depth=1, num_heads=8, mlp_dim=128, vit_width=64, vit_depth=1,
              vit_num_heads=8, vit_mlp_dim=128, action_horizon=2)

# XLA's CPU backend spends most of this test optimising code that runs once; both sides of
# each comparison are compiled with the same flags.
_FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"

_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update("jax_num_cpu_devices", 8)
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx
    from dvla_jax import models, parallel

    config = models.get_preset("tiny", **json.loads(sys.argv[1]))
    meshes = json.loads(sys.argv[2])
    batch = 8
    obs = config.fake_obs(batch, seed=1)
    tokens = jax.random.randint(jax.random.key(2), (batch, config.action_horizon,
                                                    config.action_dim), 0, config.num_bins)
    targets = jax.random.normal(jax.random.key(3), (batch,))
    # Random values drawn with numpy: the model's own init would cost a compile.
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: models.VLA(config, rngs=nnx.Rngs(0))))
    rs = np.random.default_rng(0)

    def draw(path, x):
      base = 1.0 if "scale" in jax.tree_util.keystr(path) else 0.0
      return (base + rs.normal(0.0, 0.1, x.shape)).astype(np.float32)

    params = jax.tree_util.tree_map_with_path(draw, abstract)

    def loss_fn(params, obs, tokens, targets):
      logits, value = nnx.merge(graphdef, params)(obs)
      ce = -jnp.mean(models.token_log_probs(logits, tokens))
      return ce + jnp.mean(jnp.square(value - targets)), (logits, value)

    step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))

    def as_numpy(tree):
      return [np.asarray(x, np.float64) for x in jax.tree.leaves(jax.device_get(tree))]

    (ref_loss, (ref_logits, ref_value)), ref_grads = step(params, obs, tokens, targets)
    ref = as_numpy((ref_logits, ref_value)), as_numpy(ref_grads)

    def rel_err(got, want):
      return max(float(np.linalg.norm(g - w) / max(np.linalg.norm(w), 1e-30))
                 for g, w in zip(got, want))

    results = {}
    for name, shape in meshes.items():
      auto = (jax.sharding.AxisType.Auto,) * 3
      mesh = jax.make_mesh(tuple(shape), ("data", "fsdp", "tensor"), axis_types=auto)
      parallel.check_mesh_divides(config, mesh)
      sharded = jax.device_put(params, parallel.logical_to_mesh_sharding(params, mesh))
      spec = parallel.logical_to_pspec(("batch",), mesh, parallel.DEFAULT_RULES, (batch,))
      obs_s, tokens_s, targets_s = jax.device_put(
          (obs, tokens, targets), jax.sharding.NamedSharding(mesh, spec))
      (loss, (logits, value)), grads = step(sharded, obs_s, tokens_s, targets_s)
      kernel = sharded["blocks"][0]["mlp_in"]["kernel"][...]
      qkv = sharded["blocks"][0]["attn"]["qkv"][...]
      results[name] = {
          "forward": rel_err(as_numpy((logits, value)), ref[0]),
          "grads": rel_err(as_numpy(grads), ref[1]),
          "loss": abs(float(loss) - float(ref_loss)) / abs(float(ref_loss)),
          "mlp_in_spec": [str(a) for a in kernel.sharding.spec],
          "mlp_in_shard": list(kernel.addressable_shards[0].data.shape),
          "qkv_shard": list(qkv.addressable_shards[0].data.shape),
          "devices": len(kernel.sharding.device_set),
      }
    print("RESULTS " + json.dumps(results))
""")


@pytest.fixture(scope="module")
def results():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + _FAST_COMPILE).strip()
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  proc = subprocess.run(
      [sys.executable, "-c", _SCRIPT, json.dumps(CONFIG), json.dumps(MESHES)], env=env,
      capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [x for x in proc.stdout.splitlines() if x.startswith("RESULTS ")][-1]
  return json.loads(line[len("RESULTS "):])


@pytest.mark.parametrize("name", list(MESHES))
def test_same_outputs_and_gradients_as_one_device(results, name):
  r = results[name]
  assert r["forward"] < 1e-5, r
  assert r["grads"] < 1e-5, r
  assert r["loss"] < 1e-5, r


@pytest.mark.parametrize("name", list(MESHES))
def test_parameters_really_are_split(results, name):
  data, fsdp, tensor = MESHES[name]
  r = results[name]
  assert r["devices"] == 8
  # mlp_in kernel [width, mlp] is split over (fsdp, tensor) (a size-1 axis splits nothing).
  assert r["mlp_in_spec"] == ["fsdp", "tensor"]
  assert r["mlp_in_shard"] == [CONFIG["width"] // fsdp, CONFIG["mlp_dim"] // tensor]
  # qkv [width, 3, heads, head_dim]: width over fsdp, heads over tensor.
  head_dim = CONFIG["width"] // CONFIG["num_heads"]
  assert r["qkv_shard"] == [CONFIG["width"] // fsdp, 3, CONFIG["num_heads"] // tensor, head_dim]


def test_mesh_that_does_not_divide_fails_with_one_line():
  config = models.get_preset("tiny", **CONFIG)
  with pytest.raises(parallel.MeshDivisionError) as err:
    parallel.check_mesh_divides(config.replace(num_heads=4, vit_num_heads=4),
                                {"data": 1, "fsdp": 1, "tensor": 8}, where="placement.learner")
  message = str(err.value)
  assert "\n" not in message
  assert message.startswith("placement.learner (tensor=8) does not divide model num_heads=4")
  assert "allowed: tensor in 1, 2, 4" in message
  with pytest.raises(parallel.MeshDivisionError, match=r"\(fsdp=3\).*width=64"):
    parallel.check_mesh_divides(config, {"data": 1, "fsdp": 3, "tensor": 1})
  # The rules are data: with only "mlp" split, tensor=64 divides the trunk's 128 but not 96.
  with pytest.raises(parallel.MeshDivisionError, match="vit_mlp_dim=96"):
    parallel.check_mesh_divides(config.replace(vit_mlp_dim=96), {"tensor": 64},
                                rules={"mlp": "tensor"})
  # A mesh object works too, and size-1 or absent axes never complain.
  mesh = jax.sharding.AbstractMesh((2, 2, 8), ("data", "fsdp", "tensor"))
  parallel.check_mesh_divides(config, mesh)
  parallel.check_mesh_divides(models.get_preset("small"), {"data": 5})


def test_data_fixed_dimensions_are_replicated_not_errors():
  # The byte vocabulary (259) does not split over tensor=2: it stays whole, by design.
  mesh = jax.sharding.AbstractMesh((1, 2, 2), ("data", "fsdp", "tensor"))
  config = models.get_preset("tiny")
  parallel.check_mesh_divides(config, mesh)
  spec = parallel.logical_to_pspec(("vocab", "embed"), mesh, parallel.DEFAULT_RULES,
                                   (config.vocab_size, config.width))
  assert spec == jax.sharding.PartitionSpec(None, "fsdp")
