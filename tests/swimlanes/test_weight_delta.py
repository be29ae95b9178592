"""Partial fine-tuning through the lanes (LoRA on the tiny config): each version sends only the
trainable leaves, the actors act with them merged into one frozen base, and training leaves
the frozen trunk bit for bit as it was."""

import os
import sys
import threading

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "configs"))
import demo  # noqa: E402  (a config file, imported by path)

from dvla_jax import memory  # noqa: E402
from dvla_jax import models  # noqa: E402
from dvla_jax import swimlanes  # noqa: E402
from dvla_jax.programs import builders  # noqa: E402


def _leaves(tree):
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]}


@pytest.fixture(scope="module")
def setup():
  config = demo.get_config("tiny")
  config.model.lora_rank = 4  # trainable "auto": lora, action_head, value_head
  config.rl.critic_warmup_iterations = 0  # Policy updates from the first one.
  config.swimlanes.trace = False
  components = builders.build(config)
  placement = builders.make_placement(config)
  state = components.init_train_state(jax.random.key(0))
  return components, placement, state


def test_versions_carry_the_trainable_leaves_only(setup):
  components, placement, state = setup
  lanes = swimlanes.PolicyLanes(components, placement, jax.random.key(1))
  groups = lanes.trainable
  assert groups == ("lora", "action_head", "value_head")
  snapshot, actor = lanes.weight_buffers(state, 0)
  trained, frozen = models.trainable.split(state.params, groups)
  assert lanes.sync_bytes == memory.tree_bytes(trained)
  assert lanes.sync_bytes < 0.5 * memory.tree_bytes(state.params)
  assert len(jax.tree.leaves(snapshot.take_newest()[1])) == len(jax.tree.leaves(trained))
  version, acting = actor.take_newest()
  assert version == 0 and jax.tree.structure(acting) == jax.tree.structure(state.params)
  for key, value in _leaves(state.params).items():
    np.testing.assert_array_equal(_leaves(acting)[key], value, err_msg=key)
  # A new version: only the trainable leaves move; the actors' base is the same arrays.
  base_before = actor.base
  moved = state.replace(params=models.trainable.merge(
      jax.tree.map(lambda x: x + 1.0, trained), frozen))
  lanes.publish(snapshot, 1, moved)
  lanes.distribute_into(actor, *snapshot.take_newest())
  version, acting = actor.take_newest()
  assert version == 1 and actor.base is base_before
  for key, value in _leaves(moved.params).items():
    np.testing.assert_array_equal(_leaves(acting)[key], value, err_msg=key)


def test_training_leaves_the_frozen_trunk_unchanged(setup):
  components, placement, state = setup
  start = _leaves(state.params)
  pipe = swimlanes.SyncPipeline(components, placement, swimlanes.Tracer(enabled=False),
                                jax.random.key(1))
  stats = []

  def on_update(iteration, train_state, metrics):
    del iteration, train_state, metrics
    stats.append(pipe.stats())

  state = jax.tree.map(lambda x: x.copy(), state)
  state, done = pipe.run(state, 0, 3, on_update, threading.Event())
  assert done == 3
  end = _leaves(state.params)
  changed = {k for k in start if not np.array_equal(start[k], end[k])}
  groups = {models.trainable.group_of(k.strip("[]'").split("']['")) for k in changed}
  assert "lora" in groups and groups <= {"lora", "action_head", "value_head"}
  assert not any("lora" not in k and "blocks" in k for k in changed)  # The trunk: untouched.
  assert stats[-1]["weights/bytes_per_version"] == pytest.approx(pipe.policy.sync_bytes)
