"""Checkpointer: save, reopen, restore equal values and dtypes; keeps at most max_to_keep."""

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from dvla_jax.training import checkpoints


def _train_state(scale: float):
  params = {"w": jnp.arange(6.0).reshape(2, 3) * scale, "b": jnp.full((3,), scale, jnp.bfloat16)}
  opt_state = optax.adam(1e-3).init(params)
  # One update so that the optimizer moments are not all zeros.
  grads = jax.tree.map(jnp.ones_like, params)
  _, opt_state = optax.adam(1e-3).update(grads, opt_state, params)
  return {"params": params, "opt_state": opt_state, "step": jnp.int32(7)}


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32))


def test_save_close_reopen_restore(tmp_path):
  state = _train_state(2.0)
  config = ml_collections.ConfigDict({"rl": {"lr": 3e-4}})
  ckpt = checkpoints.Checkpointer(str(tmp_path / "ckpt"), max_to_keep=2)
  assert ckpt.latest_step() is None
  assert ckpt.save(3, state, state["params"], {"env_steps": np.int64(96), "config": config})
  ckpt.close()

  ckpt = checkpoints.Checkpointer(str(tmp_path / "ckpt"), max_to_keep=2)
  assert ckpt.latest_step() == 3
  abstract = jax.eval_shape(lambda: _train_state(0.0))
  restored, meta = ckpt.restore(3, abstract)
  _assert_trees_equal(restored, state)
  # The optax namedtuples come back as namedtuples, usable by the optimizer.
  assert type(restored["opt_state"][0]) is type(state["opt_state"][0])
  assert int(restored["opt_state"][0].count) == 1
  assert meta == {"env_steps": 96, "config": {"rl": {"lr": 3e-4}}, "step": 3,
                  "format_version": checkpoints.FORMAT_VERSION}
  params = ckpt.restore_params(None, jax.eval_shape(lambda: state["params"]))
  _assert_trees_equal(params, state["params"])
  assert ckpt.metadata()["env_steps"] == 96
  ckpt.close()


def test_restore_uses_target_sharding(tmp_path):
  state = {"x": jnp.arange(4.0)}
  with checkpoints.Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(1, state, state, {})
    ckpt.wait()
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = {"x": jax.ShapeDtypeStruct((4,), jnp.float32, sharding=sharding)}
    restored, _ = ckpt.restore(None, target)
  assert restored["x"].sharding == sharding
  np.testing.assert_array_equal(restored["x"], np.arange(4.0))


def test_keeps_at_most_max_to_keep(tmp_path):
  with checkpoints.Checkpointer(str(tmp_path), max_to_keep=2) as ckpt:
    for step in (1, 2, 3, 4):
      ckpt.save(step, _train_state(float(step)), {"w": jnp.zeros(2)}, {"i": step})
    ckpt.wait()
    assert ckpt.all_steps() == [3, 4]
    restored, meta = ckpt.restore(None, jax.eval_shape(lambda: _train_state(0.0)))
  assert meta["step"] == 4 and meta["i"] == 4
  _assert_trees_equal(restored, _train_state(4.0))
  assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["3", "4"]


def test_restore_without_checkpoint_raises(tmp_path):
  with checkpoints.Checkpointer(str(tmp_path)) as ckpt:
    with pytest.raises(FileNotFoundError):
      ckpt.restore(None, {"x": jax.ShapeDtypeStruct((1,), jnp.float32)})


def test_nnx_state_round_trip(tmp_path):
  state = nnx.state(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
  with checkpoints.Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(5, state, state, {})
    ckpt.wait()
    abstract = nnx.state(nnx.eval_shape(lambda: nnx.Linear(2, 3, rngs=nnx.Rngs(1))))
    restored, _ = ckpt.restore(5, abstract)
  assert isinstance(restored, nnx.State)
  _assert_trees_equal(restored, state)
