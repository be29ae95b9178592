"""VLA module, token helpers, presets and sharded init."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dvla_jax import models
from dvla_jax import parallel
from dvla_jax.models import __main__ as models_cli


# Eager module calls dispatch op by op; jitting keeps each test to one compile.
_apply = jax.jit(lambda model, obs: model(obs))


@pytest.fixture(scope="module")
def tiny():
  config = models.get_preset("tiny")
  model = models.VLA(config, rngs=nnx.Rngs(0))
  # A trained critic's head: the fresh one is zero (see test_fresh_critic_predicts_zero).
  kernel = model.value_head.kernel
  kernel[...] = 0.3 * jax.random.normal(jax.random.key(5), kernel[...].shape)
  return config, model, config.fake_obs(3, 1)


def test_fresh_critic_predicts_zero():
  config = models.get_preset("tiny")
  _, value = _apply(models.VLA(config, rngs=nnx.Rngs(0)), config.fake_obs(4))
  np.testing.assert_array_equal(np.asarray(value), 0.0)


def test_prior_width_has_a_floor():
  """However far cloning pushes the prior's log-std head down, sigma stays >= the floor."""
  config = models.get_preset("tiny", action_prior_min_std=0.05)
  model = models.VLA(config, rngs=nnx.Rngs(0))
  model.action_prior.bias[...] = jnp.array([0.0, -50.0])  # mu 0, log-std far below the floor
  model.action_head.kernel[...] = jnp.zeros_like(model.action_head.kernel[...])
  model.action_head.bias[...] = jnp.zeros_like(model.action_head.bias[...])
  logits, _ = _apply(model, config.fake_obs(2))
  probs = np.asarray(jax.nn.softmax(logits, axis=-1))
  # sigma = 0.05 over bins 2/256 wide: about 6.4 bins, so the top bin holds well under half.
  assert probs.max() < 0.2
  assert (probs > 0.01).sum(-1).min() >= 10


def test_log_probs_and_entropy_use_the_temperature():
  logits = jax.random.normal(jax.random.key(0), (2, 1, 3, 256)) * 3
  tokens = jnp.zeros((2, 1, 3), jnp.int32)
  for t in (0.5, 1.6):
    want = jax.nn.log_softmax(logits / t)[..., 0]
    np.testing.assert_allclose(models.token_log_probs(logits, tokens, t), want, rtol=1e-5)
  hot, plain = models.token_entropy(logits, 1.6), models.token_entropy(logits)
  assert float(hot.mean()) > float(plain.mean())


def _max_diff(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


def test_output_shapes_and_dtypes(tiny):
  config, model, obs = tiny
  logits, value = _apply(model, obs)
  assert logits.shape == (3, 2, 3, 256) and logits.dtype == jnp.float32
  assert value.shape == (3,) and value.dtype == jnp.float32
  assert np.all(np.isfinite(logits)) and np.all(np.isfinite(value))


def test_bfloat16_multi_camera_outputs_stay_float32():
  config = models.get_preset("tiny", dtype="bfloat16", action_horizon=3, num_cameras=2)
  model = models.VLA(config, rngs=nnx.Rngs(0))
  logits, value = _apply(model, config.fake_obs(2))
  assert logits.shape == (2, 3, 3, 256) and logits.dtype == jnp.float32
  assert value.shape == (2,) and value.dtype == jnp.float32
  assert np.all(np.isfinite(logits)) and np.all(np.isfinite(value))


def test_bfloat16_compute_with_float32_master_weights_is_close_to_float32(tiny):
  config, model, obs = tiny
  # The same float32 parameters, computed in bfloat16 (param_dtype stays float32).
  graphdef16, _ = nnx.split(models.VLA(config.replace(dtype="bfloat16"), rngs=nnx.Rngs(0)))
  model16 = nnx.merge(graphdef16, nnx.state(model))
  tokens = jnp.zeros((obs["text"].shape[0], config.action_horizon, config.action_dim), jnp.int32)

  @jax.jit
  def forward_and_grads(m):
    def loss(m):
      lg, v = m(obs)
      return -jnp.mean(models.token_log_probs(lg, tokens)) + jnp.mean(jnp.square(v)), (lg, v)
    return nnx.grad(loss, has_aux=True)(m)

  g32, (logits, value) = forward_and_grads(model)
  g16, (logits16, value16) = forward_and_grads(model16)
  diff = _max_diff(logits16, logits)
  assert 1e-6 < diff < 0.02 * float(np.std(logits))  # really bfloat16, and close
  assert _max_diff(value16, value) < 0.1 * float(np.std(value))
  g32, g16 = jax.tree.leaves(g32), jax.tree.leaves(g16)
  assert {x.dtype for x in g16} == {jnp.dtype(jnp.float32)}  # master-weight gradients
  flat32 = np.concatenate([np.ravel(x) for x in g32])
  flat16 = np.concatenate([np.ravel(x) for x in g16])
  assert np.linalg.norm(flat16 - flat32) / np.linalg.norm(flat32) < 0.05


def test_fake_obs_is_valid():
  config = models.get_preset("tiny", max_text_len=12)
  obs = config.fake_obs(5)
  assert obs["image"].dtype == jnp.uint8 and obs["image"].shape == (5, 1, 32, 32, 3)
  assert obs["proprio"].shape == (5, 8)
  text = np.asarray(obs["text"])
  assert text.shape == (5, 12) and text.dtype == np.int32
  for row in text:
    eos = int(np.flatnonzero(row == 2)[0])
    assert row[0] == 1 and eos >= 2 and np.all(row[eos + 1:] == 0) and np.all(row[1:eos] >= 3)


def test_image_and_text_change_logits(tiny):
  config, model, obs = tiny
  logits, value = _apply(model, obs)
  flipped = dict(obs, image=255 - obs["image"])
  assert _max_diff(_apply(model, flipped)[0], logits) > 1e-4
  other_text = dict(obs, text=obs["text"].at[:, 1].set(obs["text"][:, 1] % 250 + 4))
  assert _max_diff(_apply(model, other_text)[0], logits) > 1e-4
  other_proprio = dict(obs, proprio=obs["proprio"] + 1.0)
  assert _max_diff(_apply(model, other_proprio)[1], value) > 1e-4


def test_padding_is_invisible(tiny):
  config, model, obs = tiny
  # Every fake instruction has padding, so if any token attended to a pad token the logits
  # would move when the pad embedding does.
  assert np.all(np.asarray(obs["text"])[:, -1] == 0)
  logits, value = _apply(model, obs)
  graphdef, state = nnx.split(model)
  changed = nnx.merge(graphdef, jax.tree.map(jnp.copy, state))
  changed.text_embed[...] = changed.text_embed[...].at[0].set(5.0)
  new_logits, new_value = _apply(changed, obs)
  assert _max_diff(new_logits, logits) < 1e-5 and _max_diff(new_value, value) < 1e-5
  # Control: a real token's embedding does matter.
  changed.text_embed[...] = changed.text_embed[...].at[1].set(5.0)
  assert _max_diff(_apply(changed, obs)[0], logits) > 1e-4


def test_prefix_query_mask():
  valid = jnp.array([[True, True, False], [True, False, True]])
  mask = np.asarray(models.prefix_query_mask(valid, 2))
  assert mask.shape == (2, 1, 5, 5)
  expected0 = np.array([
      [1, 1, 0, 0, 0],  # prefix rows: valid prefix only, never queries
      [1, 1, 0, 0, 0],
      [1, 1, 0, 0, 0],
      [1, 1, 0, 1, 1],  # query rows: valid prefix and every query
      [1, 1, 0, 1, 1],
  ], bool)
  np.testing.assert_array_equal(mask[0, 0], expected0)
  np.testing.assert_array_equal(mask[1, 0, :, 1], np.zeros(5, bool))
  np.testing.assert_array_equal(mask[1, 0, 4], [1, 0, 1, 1, 1])


_sample = jax.jit(models.sample_tokens)


def test_log_probs_match_direct_log_softmax():
  logits = jax.random.normal(jax.random.key(0), (64, 2, 3, 256)) * 3.0
  tokens = _sample(logits, jax.random.key(1), 1.0)
  assert tokens.shape == (64, 2, 3) and tokens.dtype == jnp.int32
  got = np.asarray(jax.jit(models.token_log_probs)(logits, tokens))
  x = np.asarray(logits, np.float64)
  shifted = x - x.max(-1, keepdims=True)
  log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  b, h, d = np.indices(tokens.shape)
  np.testing.assert_allclose(got, log_softmax[b, h, d, np.asarray(tokens)], rtol=1e-5, atol=1e-5)


def test_sampling_temperature():
  logits = jax.random.normal(jax.random.key(0), (64, 2, 3, 256))
  argmax = np.asarray(jnp.argmax(logits, -1))
  # A Python 0 takes the argmax path without sampling; a traced 0 selects it with `where`.
  np.testing.assert_array_equal(models.sample_tokens(logits, jax.random.key(1), 0), argmax)
  np.testing.assert_array_equal(_sample(logits, jax.random.key(1), 0.0), argmax)
  # At temperature 1 a near-uniform distribution rarely samples the argmax.
  sampled = np.asarray(_sample(logits, jax.random.key(1), 1.0))
  assert np.mean(sampled == argmax) < 0.2
  # Samples follow the distribution: a token with 90% mass is drawn about 90% of the time.
  peaked = jnp.zeros_like(logits).at[..., 7].set(np.log(0.9 * 255 / 0.1))
  frac = np.mean(np.asarray(_sample(peaked, jax.random.key(2), 1.0)) == 7)
  assert 0.85 < frac < 0.95
  # High temperature flattens the peak.
  hot = np.mean(np.asarray(_sample(peaked, jax.random.key(2), 100.0)) == 7)
  assert hot < 0.1


def test_entropy():
  uniform = jnp.zeros((2, 2, 3, 256))
  np.testing.assert_allclose(models.token_entropy(uniform), np.log(256), rtol=1e-6)
  one_hot = jnp.full((1, 1, 1, 256), -1e4).at[..., 3].set(0.0)
  np.testing.assert_allclose(models.token_entropy(one_hot), 0.0, atol=1e-5)


def test_remat_matches_plain(tiny):
  config, model, obs = tiny
  remat_graph, _ = nnx.split(models.VLA(config.replace(remat=True), rngs=nnx.Rngs(0)))
  remat_model = nnx.merge(remat_graph, nnx.state(model))

  @jax.jit
  def grads(m):
    def loss(m):
      logits, value = m(obs)
      return jnp.mean(jax.nn.log_softmax(logits)[..., 0]) + jnp.mean(value)
    return nnx.grad(loss)(m)

  g_remat, g_plain = grads(remat_model), grads(model)
  diffs = jax.tree.leaves(jax.tree.map(_max_diff, g_remat, g_plain))
  assert max(diffs) < 1e-6


def test_every_param_has_logical_axes():
  config = models.get_preset("tiny", vit_width=16, vit_depth=1, vit_num_heads=2,
                             vit_mlp_dim=32)
  model = nnx.eval_shape(lambda: models.VLA(config, rngs=nnx.Rngs(0)))
  flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
  assert len(flat) > 20
  for path, var in flat:
    names = var.get_metadata().get("out_sharding")
    assert names is not None and len(names) == len(var.shape), path
    assert set(names) <= set(models.LOGICAL_AXES) | {None}, path


@pytest.mark.parametrize("name", ["base", "1b", "7b", "1t"])
def test_preset_counts_near_nominal(name):
  count = models.count_params(models.get_preset(name))
  assert abs(count / models.NOMINAL_PARAMS[name] - 1) < 0.05


def test_preset_errors():
  with pytest.raises(ValueError, match="allowed: tiny, small"):
    models.get_preset("3b")
  with pytest.raises(ValueError, match="num_heads"):
    models.get_preset("tiny", num_heads=3)
  with pytest.raises(ValueError, match="bogus"):
    models.get_preset("tiny", bogus=1)
  assert models.get_preset("small", action_horizon=4).action_horizon == 4


def test_cli(capsys):
  assert models_cli.main(["--preset", "small", "--count"]) == 0
  count = models.count_params(models.get_preset("small"))
  assert capsys.readouterr().out.strip() == f"small: {count:,} parameters"
  assert models_cli.main(["--preset", "nope", "--count"]) == 2
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and "nope" in err


def test_sharded_init_one_device():
  mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  config = models.get_preset("tiny")
  model = parallel.create_sharded_model(config, mesh, parallel.DEFAULT_RULES, rng=3)
  reference = models.VLA(config, rngs=nnx.Rngs(3))
  params = nnx.state(model, nnx.Param)
  assert all(v[...].sharding.mesh.shape == mesh.shape for v in jax.tree.leaves(
      params, is_leaf=lambda x: isinstance(x, nnx.Variable)))
  # Same keys, same values (up to jit's float re-association of the init scaling).
  diffs = jax.tree.map(_max_diff, params, nnx.state(reference, nnx.Param))
  assert max(jax.tree.leaves(diffs)) < 1e-7


def test_logical_to_pspec_drops_invalid_axes():
  mesh = jax.make_mesh((1, 1), ("fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  rules = {"embed": "fsdp", "mlp": "tensor", "batch": ("data", "fsdp")}
  p = jax.sharding.PartitionSpec
  assert parallel.logical_to_pspec(("embed", "mlp"), mesh, rules) == p("fsdp", "tensor")
  assert parallel.logical_to_pspec(("batch", None), mesh, rules) == p("fsdp", None)  # no "data"
  assert parallel.logical_to_pspec(("embed", "embed"), mesh, rules) == p("fsdp", None)
  assert parallel.logical_to_pspec(None, mesh, rules) == p()


_EIGHT_DEVICES = textwrap.dedent("""
    import jax
    jax.config.update("jax_num_cpu_devices", 8)
    import numpy as np
    from flax import nnx
    from dvla_jax import models, parallel
    auto = (jax.sharding.AxisType.Auto,) * 3
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=auto)
    config = models.get_preset("tiny")
    model = parallel.create_sharded_model(config, mesh, parallel.DEFAULT_RULES, rng=0)
    kernel = model.blocks[0].mlp_in.kernel[...]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor"), kernel.sharding
    assert kernel.addressable_shards[0].data.shape == (16, 32)
    vocab = model.text_embed[...]  # 259 rows do not split over tensor=2: kept whole
    assert vocab.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp"), vocab.sharding
    batch_sharding = jax.sharding.NamedSharding(
        mesh, parallel.logical_to_pspec(("batch",), mesh, parallel.DEFAULT_RULES))
    obs = jax.device_put(config.fake_obs(4), batch_sharding)
    logits, value = jax.jit(lambda m, o: m(o))(model, obs)
    assert logits.shape == (4, 2, 3, 256) and np.all(np.isfinite(logits))
    print("OK")
""")


def test_sharded_init_eight_fake_devices():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  result = subprocess.run([sys.executable, "-c", _EIGHT_DEVICES], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
  assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-2000:]


def test_observation_without_an_image_uses_text_and_proprio_only(tiny):
  """An env without a camera: no "image" key (or None); the text and proprio still decide."""
  config, model, obs = tiny
  no_image = {k: v for k, v in obs.items() if k != "image"}
  logits, value = _apply(model, no_image)
  assert logits.shape == (3, config.action_horizon, config.action_dim, config.num_bins)
  assert value.shape == (3,)
  assert np.isfinite(np.asarray(logits)).all()
  moved = dict(no_image, proprio=no_image["proprio"] + 1.0)
  assert _max_diff(_apply(model, moved)[0], logits) > 1e-4
  same, _ = _apply(model, dict(no_image, image=None))
  np.testing.assert_allclose(np.asarray(same), np.asarray(logits), rtol=1e-6, atol=1e-6)
  # A blank image is an image like any other: the model reads it through the patch encoder.
  blank = dict(obs, image=np.zeros_like(obs["image"]))
  assert _apply(model, blank)[0].shape == logits.shape
