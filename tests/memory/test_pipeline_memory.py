"""The async pipeline in its pools: after warm-up it allocates no new device buffers.

The census runs from the gradient lane's `on_update` while `AsyncPipeline.paused` holds the
other lanes at a consistent cut, so short-lived arrays in flight (env steps, actions) are
counted the same way every time. Any buffer that is allocated per iteration and kept (a new
weights copy per version, a slot that is not returned, a donation XLA could not use) shows up
as a change in the count or bytes of `jax.live_arrays()`, or in the buffers the pools hold.
"""

import os
import sys
import threading

import jax
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "configs"))
import demo  # noqa: E402  (a config file, imported by path)

from dvla_jax import memory  # noqa: E402
from dvla_jax import swimlanes  # noqa: E402
from dvla_jax.models import presets  # noqa: E402
from dvla_jax.programs import builders  # noqa: E402

# Warm-up: compilation, and the first rollouts of each env group.
WARMUP, ITERATIONS, EVERY = 10, 100, 4


def _config():
  config = demo.get_config("tiny")
  config.pipeline = "async"
  config.model.preset = "census"
  config.env.num_envs = 2  # Two env groups of one world each.
  config.swimlanes.env_groups = 2
  config.swimlanes.poll_s = 0.01
  config.rl.rollout_length = 1
  config.rl.num_minibatches = 1
  config.rl.max_staleness = 1
  return config


def _pointers(trees) -> set[int]:
  return {s.data.unsafe_buffer_pointer() for tree in trees for x in jax.tree.leaves(tree)
          for s in x.addressable_shards}


@pytest.mark.slow
def test_async_pipeline_in_its_pools_allocates_no_device_buffers(monkeypatch):
  # The MJX state of one world (~100 KB) outweighs the tiny model's 130 KB of weights; a model
  # of ~1 MB, still far smaller than any real VLA, lets the pools' share mean something.
  monkeypatch.setitem(presets.PRESETS, "census",
                      presets.PRESETS["small"].replace(width=96, mlp_dim=384))
  config = _config()
  components = builders.build(config)
  placement = builders.make_placement(config)
  state = components.init_train_state(jax.random.key(0))
  pipe = swimlanes.AsyncPipeline(components, placement, swimlanes.Tracer(enabled=False),
                                 jax.random.key(1))
  census, static_buffers = {}, {}

  def on_update(iteration, st, metrics):
    del st, metrics
    if iteration < WARMUP or (iteration - WARMUP) % EVERY:
      return
    with pipe.paused():
      census[iteration] = memory.live_device_bytes()
      static, _ = pipe.pools
      static_buffers[iteration] = _pointers(
          tree for name in ("train_state", "learner_snapshot", "actor_weights")
          for tree in static.trees(name))

  total = WARMUP + ITERATIONS
  with memory.strict_donation():  # A donation XLA cannot use fails the lane that made it.
    final, done = pipe.run(state, 0, total, on_update, threading.Event())
  assert done == total and int(final.step) == total
  assert sorted(census) == list(range(WARMUP, total + 1, EVERY))
  # Weights flowed all along: the actors hold a recent version.
  assert pipe.stats()["actor/version"] >= total - 5

  first = census[WARMUP]
  changed = {it: c for it, c in census.items() if c != first}
  assert not changed, f"live (count, bytes) after warm-up {first}; changed: {changed}"
  # Updated in place: the train state and both weight double buffers never moved.
  assert all(p == static_buffers[WARMUP] for p in static_buffers.values())

  report = pipe.memory_report
  assert set(report["static"]["entries"]) == {"train_state", "learner_snapshot",
                                              "actor_weights"}
  assert report["dynamic"]["num_slots"] == 3 and report["per_device"]
  assert report["static"]["entries"]["actor_weights"] == 2 * memory.tree_bytes(final.params)
  _, live_bytes = first
  print(f"live after warm-up: {first}; pools: {report['total_bytes']} bytes "
        f"({report['total_bytes'] / live_bytes:.2%})")
  assert report["total_bytes"] >= 0.95 * live_bytes, (report["total_bytes"], live_bytes)
  assert report["total_bytes"] <= live_bytes
