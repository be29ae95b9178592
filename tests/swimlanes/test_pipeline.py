"""The four lanes end to end on the tiny config: versions flow, faults stop everything fast,
non-finite updates are skipped and, in a row, halt the run with the last good checkpoint."""

import os
import sys
import threading
import time

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "configs"))
import demo  # noqa: E402  (a config file, imported by path)

from dvla_jax import swimlanes  # noqa: E402
from dvla_jax.programs import builders  # noqa: E402
from dvla_jax.training import checkpoints  # noqa: E402
from dvla_jax.training import trainer  # noqa: E402


def _config():
  config = demo.get_config("tiny")
  config.pipeline = "async"
  config.swimlanes.env_groups = 2
  config.swimlanes.poll_s = 0.02
  config.swimlanes.stall_timeout_s = 600.0
  config.rl.max_staleness = 1
  return config


@pytest.fixture(scope="module")
def components():
  return builders.build(_config())


@pytest.fixture(scope="module")
def setup(components):
  placement = builders.make_placement(components.config)
  rng = jax.random.key(0)
  state = components.init_train_state(rng)
  return components, placement, state


def _run(kind, setup, iterations, start=0, **hooks):
  components, placement, state = setup
  tracer = swimlanes.Tracer()
  pipe = kind(components, placement, tracer, jax.random.key(1), **hooks)
  seen = {}

  def on_update(iteration, st, metrics):
    seen[iteration] = ({k: float(v) for k, v in jax.device_get(metrics).items()},
                       jax.device_get(st.params))

  # Copy: the pipeline donates the state it is given.
  state = jax.tree.map(lambda x: x.copy(), state)
  new_state, done = pipe.run(state, start, start + iterations, on_update, threading.Event())
  return pipe, tracer, seen, new_state, done


def test_async_lanes_run_on_their_threads_and_versions_flow(setup):
  pipe, tracer, seen, state, done = _run(swimlanes.AsyncPipeline, setup, 4)
  assert done == 4 and int(state.step) == 4 and sorted(seen) == [1, 2, 3, 4]
  threads = {(s.lane, s.thread) for s in tracer.spans if s.kind == "busy"}
  assert {lane: thread for lane, thread in threads} == {l: l for l in swimlanes.LANES}
  # The actors switched to newer weights while sampling went on, and the learner saw it.
  assert max(m["rollout/version_max"] for m, _ in seen.values()) >= 1
  assert all(m["learner/staleness_mean"] >= 0 for m, _ in seen.values())
  assert {"learner/behaviour_kl", "learner/clip_fraction", "learner/stale_fraction"} <= set(
      seen[4][0])
  stats = pipe.stats()
  assert stats["actor/version"] >= 1
  assert pipe.supervisor.alive() == []
  # Every sampling step overlapped or alternated with inference: both lanes did work.
  totals = tracer.totals()
  assert all(totals[lane]["busy_s"] > 0 for lane in swimlanes.LANES)


def test_sync_baseline_runs_the_same_components_on_policy(setup):
  _, tracer, seen, state, done = _run(swimlanes.SyncPipeline, setup, 2)
  assert done == 2 and int(state.step) == 2
  for m, _ in seen.values():
    assert m["learner/staleness_mean"] == 0.0 and m["learner/stale_fraction"] == 0.0
  assert {s.thread for s in tracer.spans} == {threading.current_thread().name}


@pytest.mark.parametrize("lane", swimlanes.LANES)
def test_a_fault_in_any_lane_stops_all_lanes_within_5s(setup, lane):
  components, placement, state = setup
  pipe = swimlanes.AsyncPipeline(components, placement, swimlanes.Tracer(), jax.random.key(1),
                                 faults=swimlanes.FaultPlan(lane, after=2))
  state = jax.tree.map(lambda x: x.copy(), state)
  with pytest.raises(swimlanes.LaneError, match=f"{lane} lane failed: InjectedFault"):
    pipe.run(state, 0, 50, lambda *a: None, threading.Event())
  stopped_after = time.monotonic() - pipe.supervisor.error_time
  assert stopped_after < 5.0
  assert pipe.supervisor.alive() == []


def test_poisoned_update_is_skipped_and_params_kept(setup):
  _, _, seen, _, _ = _run(swimlanes.SyncPipeline, setup, 3, poison=swimlanes.Poison(2, 1))
  assert [seen[i][0]["learner/skipped"] for i in (1, 2, 3)] == [0.0, 1.0, 0.0]
  unchanged = jax.tree.map(lambda a, b: np.array_equal(a, b), seen[1][1], seen[2][1])
  assert all(jax.tree.leaves(unchanged))
  changed = jax.tree.map(lambda a, b: np.array_equal(a, b), seen[2][1], seen[3][1])
  assert not all(jax.tree.leaves(changed))


def test_bad_updates_in_a_row_halt_with_the_last_good_checkpoint(components, tmp_path):
  config = _config()
  config.pipeline = "sync"  # Same components; evaluation then needs no env of its own.
  config.train.iterations = 8
  config.train.eval_every = 100
  config.train.eval_episodes = 4
  config.train.max_bad_updates = 2
  config.testing.nan_from = 3
  config.testing.nan_count = 5
  rows = []
  with pytest.raises(trainer.BadUpdatesError, match="2 updates in a row"):
    trainer.train(config, str(tmp_path), progress_fn=lambda i, m: rows.append((i, m)),
                  components=components)
  with checkpoints.Checkpointer(str(tmp_path / "checkpoints")) as ckpt:
    assert ckpt.latest_step() == 2
  skipped = [m["learner/skipped_updates"] for _, m in rows if "learner/skipped_updates" in m]
  assert skipped[-1] == 2
  assert os.path.exists(tmp_path / trainer.TRACE_FILE)
