"""The two pools: in-place writes, backpressure, the double buffer, and a flat steady state."""

import threading
import warnings

import jax
import jax.numpy as jnp
import optax
import pytest

from dvla_jax import memory

T, B, OBS, HID, H, D = 4, 8, 16, 64, 2, 3


def _make_slot():
  return {"obs": jnp.zeros((T, B, OBS)), "tokens": jnp.zeros((T, B, H, D), jnp.int32),
          "log_probs": jnp.zeros((T, B, H, D)), "reward": jnp.zeros((T, B)),
          "done": jnp.zeros((T, B), bool), "version": jnp.zeros((T, B), jnp.int32)}


_OPT = optax.adam(1e-3)


@jax.jit
def _init_state(rng):
  k1, k2 = jax.random.split(rng)
  params = {"w1": jax.random.normal(k1, (OBS, HID)) * 0.1,
            "w2": jax.random.normal(k2, (HID, H * D)) * 0.1, "b": jnp.zeros((H * D,))}
  return {"step": jnp.zeros((), jnp.int32), "params": params, "opt": _OPT.init(params)}


def _forward(params, obs):
  return jnp.tanh(obs @ params["w1"]) @ params["w2"] + params["b"]


@jax.jit
def _act(params, obs, version):
  logits = _forward(params, obs).reshape(obs.shape[0], H, D)
  return {"obs": obs, "tokens": jnp.argmax(logits, -1, keepdims=True).repeat(D, -1),
          "log_probs": jax.nn.log_softmax(logits), "reward": jnp.sum(logits, (1, 2)),
          "done": logits[:, 0, 0] > 0, "version": version}


def _update(state, slot):
  def loss(p):
    out = _forward(p, slot["obs"]).reshape(T, B, H, D)
    return jnp.mean((out - slot["log_probs"]) ** 2 * (1 + slot["reward"][..., None, None]))

  grads = jax.grad(loss)(state["params"])
  updates, opt = _OPT.update(grads, state["opt"], state["params"])
  return {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
          "opt": opt}


_learn = jax.jit(_update, donate_argnums=0)


def _pointers(tree):
  return {x.unsafe_buffer_pointer() for x in jax.tree.leaves(tree)}


def test_donations_alias_every_buffer():
  state, slot = _init_state(jax.random.key(0)), _make_slot()
  step = _act(state["params"], jnp.ones((B, OBS)), jnp.int32(0))
  n_state, n_slot = len(jax.tree.leaves(state)), len(jax.tree.leaves(slot))
  assert memory.donated_aliases(_learn, state, slot) == n_state
  assert memory.donated_aliases(memory.pools.write_step, slot, jnp.int32(0), step) == n_slot
  assert memory.donated_aliases(memory.pools.overwrite, state["params"], state["params"]) == 3
  # A donation with nothing to alias is an error, not a warning.
  with pytest.raises(UserWarning, match=memory.UNUSABLE_DONATION):
    memory.donated_aliases(jax.jit(lambda s: jnp.sum(s["obs"]), donate_argnums=0), slot)


def test_slot_pool_backpressure_never_allocates():
  pool = memory.SlotPool(_make_slot, num_slots=2)
  a, b = pool.acquire(0), pool.acquire(0)
  count, nbytes = memory.live_device_bytes()
  assert pool.acquire(timeout=0.05) is None
  assert memory.live_device_bytes() == (count, nbytes)
  assert pool.high_water == 2
  got = []
  waiter = threading.Thread(target=lambda: got.append(pool.acquire(timeout=5.0)))
  waiter.start()
  pool.release(a)
  waiter.join(5.0)
  assert got and got[0] is a
  pool.release(b)
  pool.release(got[0])
  with pytest.raises(ValueError, match="without a matching acquire"):
    pool.release(b)
  with pytest.raises(ValueError, match="not one of this pool's slots"):
    pool.release({"obs": jnp.zeros((1,))})


def test_slot_write_is_in_place_and_correct():
  pool = memory.SlotPool(_make_slot, num_slots=1)
  slot = pool.acquire(0)
  before = _pointers(slot)
  params = _init_state(jax.random.key(1))["params"]
  steps = [_act(params, jnp.full((B, OBS), t + 1.0), jnp.int32(t)) for t in range(T)]
  for t, step in enumerate(steps):
    slot = memory.pools.write_step(slot, jnp.int32(t), step)
  assert _pointers(slot) == before
  for t, step in enumerate(steps):
    for k in slot:
      assert jnp.array_equal(slot[k][t], jnp.broadcast_to(step[k], slot[k].shape[1:])), k


def test_weight_buffer_swaps_by_version_in_place():
  params = _init_state(jax.random.key(2))["params"]
  buf = memory.WeightBuffer(params, version=3)
  pointers = set().union(*(_pointers(t) for t in buf.trees()))
  assert buf.take_newest()[0] == 3
  newer = jax.tree.map(lambda x: x + 1.0, params)
  buf.stage(4, newer)
  buf.stage(5, jax.tree.map(lambda x: x + 2.0, params))  # Latest wins before the reader looks.
  version, held = buf.take_newest()
  assert version == 5 and buf.swaps == 1
  assert jnp.allclose(held["w1"], params["w1"] + 2.0)
  buf.stage(4, newer)  # Older than what the reader holds: staged but never taken.
  assert buf.take_newest()[0] == 5
  assert set().union(*(_pointers(t) for t in buf.trees())) == pointers


def test_steady_state_allocates_nothing():
  """Acquire, write T steps, learn (donating the state), release, distribute: flat memory."""
  state = _init_state(jax.random.key(3))
  static = memory.StaticPool()
  weights = memory.WeightBuffer(jax.tree.map(jnp.copy, state["params"]))
  holder = {"state": state}
  static.register("train_state", lambda: [holder["state"]])
  static.register("actor_weights", weights.trees)
  pool = memory.SlotPool(_make_slot, num_slots=3)
  obs = jnp.ones((B, OBS))

  def iteration(it):
    version, params = weights.take_newest()
    slot = pool.acquire(timeout=1.0)
    assert slot is not None
    for t in range(T):
      step = _act(params, obs * (t + it), jnp.int32(version))
      slot = memory.pools.write_step(slot, jnp.int32(t), step)
    holder["state"] = _learn(holder["state"], slot)
    pool.release(slot)
    weights.stage(it, holder["state"]["params"])

  with memory.strict_donation(), warnings.catch_warnings():
    warnings.simplefilter("error")
    for it in range(1, 4):  # Warm-up: compile everything once.
      iteration(it)
    count, nbytes = memory.live_device_bytes()
    rep = memory.report(static, pool)
    for it in range(4, 34):
      iteration(it)
      assert memory.live_device_bytes() == (count, nbytes), f"iteration {it}"
  assert int(holder["state"]["step"]) == 33 and weights.take_newest()[0] == 33
  state_bytes = memory.tree_bytes(holder["state"])
  assert rep["static"]["entries"] == {"train_state": state_bytes,
                                      "actor_weights": 2 * memory.tree_bytes(state["params"])}
  assert rep["dynamic"]["bytes"] == 3 * memory.tree_bytes(_make_slot())
  assert rep["total_bytes"] == rep["static"]["bytes"] + rep["dynamic"]["bytes"]
  assert sum(rep["dynamic"]["per_device"].values()) == rep["dynamic"]["bytes"]
  assert sum(rep["per_device"].values()) == rep["total_bytes"]
  # Everything else alive (the obs fixture) is small: the pools hold >= 95% of device bytes.
  assert rep["total_bytes"] >= 0.95 * nbytes, (rep["total_bytes"], nbytes)
  assert rep["total_bytes"] <= nbytes
