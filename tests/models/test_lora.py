"""LoRA adapters and partial fine-tuning: the adapted model starts as the base one, only the
chosen groups learn, and only they hold optimizer state."""

import dataclasses

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dvla_jax import models
from dvla_jax import parallel
from dvla_jax.config import default_config
from dvla_jax.models import trainable
from dvla_jax.programs import builders

BASE = models.get_preset("tiny", max_text_len=8, proprio_dim=6)
LORA = dataclasses.replace(BASE, lora_rank=4)


def _leaves(params):
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


def test_adapted_model_starts_as_the_base_model():
  @jax.jit
  def run(obs):
    base, lora = models.VLA(BASE, rngs=nnx.Rngs(0)), models.VLA(LORA, rngs=nnx.Rngs(0))
    return base(obs), lora(obs), nnx.state(base), nnx.state(lora)

  base_out, lora_out, base_state, lora_state = run(BASE.fake_obs(3))
  for a, b in zip(base_out, lora_out, strict=True):  # B = 0: only float rounding differs.
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  base_leaves, lora_leaves = _leaves(base_state), _leaves(lora_state)
  added = set(lora_leaves) - set(base_leaves)
  assert added and all("lora" in k and "blocks" in k for k in added)
  for key, value in base_leaves.items():  # Same keys, same values: adapters draw their own.
    np.testing.assert_array_equal(lora_leaves[key], value)
  # 4 projections per block, an (A, B) pair each.
  assert len(added) == 8 * BASE.depth


def test_trainable_groups_parse_with_one_line_errors():
  assert trainable.parse("auto", 0) == trainable.GROUPS[1:]
  assert trainable.parse("auto", 4) == ("lora", "action_head", "value_head")
  assert trainable.parse("all", 4) == trainable.GROUPS
  assert trainable.parse("value_head, action_head", 0) == ("value_head", "action_head")
  with pytest.raises(ValueError, match="unknown group heads; allowed: all, auto"):
    trainable.parse("heads", 0)
  with pytest.raises(ValueError, match="names lora but lora_rank is 0"):
    trainable.parse("lora", 0)
  with pytest.raises(ValueError, match="VLAConfig.trainable"):
    dataclasses.replace(BASE, trainable="lora")


def test_only_trainable_groups_learn_and_hold_optimizer_state():
  groups = trainable.parse("auto", LORA.lora_rank)
  params = jax.jit(lambda: nnx.state(models.VLA(LORA, rngs=nnx.Rngs(1))))()
  optimizer = builders.make_optimizer(default_config.get_config().rl, groups)
  opt_state = jax.jit(optimizer.init)(params)
  labels = trainable.labels(params, groups)
  trained = sum(int(p.size) for p, label in zip(jax.tree.leaves(params), jax.tree.leaves(labels),
                                                  strict=True) if label == "train")
  # Adam's two moments for the trained leaves only (plus step counts).
  assert sum(int(x.size) for x in jax.tree.leaves(opt_state)) <= 2 * trained + 8
  @jax.jit
  def step(params, opt_state):
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates)

  new = step(params, opt_state)
  before, after = _leaves(params), _leaves(new)
  for key in before:
    group = trainable.group_of([k for k in key.strip("[]'").split("']['")])
    if group in groups:
      assert not np.array_equal(before[key], after[key]), key
    else:  # Frozen: bit for bit.
      np.testing.assert_array_equal(before[key], after[key], err_msg=key)
  # Full fine-tuning keeps the optimizer exactly as it was (checkpoints stay compatible).
  assert trainable.partial(BASE) is None and trainable.partial(LORA) == groups
  assert trainable.partial(dataclasses.replace(LORA, trainable="all")) is None
  assert trainable.partial(dataclasses.replace(BASE, trainable="trunk")) == ("trunk",)


def test_planner_counts_optimizer_state_of_the_adapters_only():
  full = parallel.plan_memory(models.get_preset("7b"), {"fsdp": 8})
  lora = parallel.plan_memory(models.get_preset("7b", lora_rank=16), {"fsdp": 8})
  ratio = lora.learner.terms["optimizer state"] / full.learner.terms["optimizer state"]
  assert 0.001 < ratio < 0.02
  assert lora.learner.terms["gradients"] < 0.02 * full.learner.terms["gradients"]
  assert lora.num_params > full.num_params  # The adapters are there.


def test_merged_export_runs_on_the_base_architecture():
  """W + A B on the base model gives the adapted model's outputs."""
  @jax.jit
  def run(obs):
    adapted = models.VLA(LORA, rngs=nnx.Rngs(0))
    state = jax.tree_util.tree_map_with_path(  # Trained-looking adapters: B away from zero.
        lambda p, x: x + 0.1 if "lora_b" in jax.tree_util.keystr(p) else x, nnx.state(adapted))
    nnx.update(adapted, state)
    base = models.VLA(BASE, rngs=nnx.Rngs(5))
    merged = nnx.state(base)
    merged.replace_by_pure_dict(trainable.merge_adapters(state))
    nnx.update(base, merged)
    return adapted(obs), base(obs)

  adapted_out, base_out = run(BASE.fake_obs(2))
  assert float(jnp.abs(adapted_out[0]).max()) > 0.1
  for a, b in zip(adapted_out, base_out, strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
