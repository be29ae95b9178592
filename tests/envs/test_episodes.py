"""The shared episode loop: an episode ends at its first done or success, nothing after counts."""

from brax.envs import base as brax_base
import jax.numpy as jnp
import numpy as np

from dvla_jax.envs import episodes


def _state(success, reward, done):
  f = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
  return brax_base.State(pipeline_state=None, obs={}, reward=f(reward), done=f(done),
                         metrics={"success": f(success)})


def test_accumulate_stops_counting_at_first_success():
  totals = episodes.Totals.zeros(2)
  # World 0 succeeds at step 2 and would be rewarded again at step 3; world 1 never does.
  for step_success, reward in (([0, 0], [1, 1]), ([1, 0], [1, 1]), ([1, 0], [5, 1])):
    totals = episodes.accumulate(totals, jnp.asarray(step_success, jnp.float32),
                                 jnp.asarray(reward, jnp.float32), jnp.zeros((2,)))
  np.testing.assert_array_equal(totals.success, [1, 0])
  np.testing.assert_array_equal(totals.ret, [2, 3])
  np.testing.assert_array_equal(totals.length, [2, 3])
  np.testing.assert_array_equal(totals.active, [0, 1])


def test_play_ends_each_world_at_its_first_done_and_stops_early():
  # World 0 succeeds at step 2; world 1 is terminated (done, no success) at step 3 and then
  # auto-resets into a success that must not count; world 2 succeeds at step 5.
  script = [([0, 0, 0], [0, 0, 0]), ([1, 0, 0], [0, 0, 0]), ([0, 0, 0], [0, 1, 0]),
            ([0, 1, 0], [0, 1, 0]), ([0, 0, 1], [0, 0, 1])] + [([0, 0, 0], [0, 0, 0])] * 10
  seen = []

  def step(state, t):
    del state
    success, done = script[t]
    return _state(success, [1.0, 1.0, 1.0], np.maximum(success, done))

  _, totals = episodes.play(_state([0] * 3, [0] * 3, [0] * 3), step, limit=len(script),
                            on_step=lambda t, s, n: seen.append(t))
  np.testing.assert_array_equal(totals.success, [1, 0, 1])
  np.testing.assert_array_equal(totals.length, [2, 3, 5])
  np.testing.assert_array_equal(totals.ret, [2, 3, 5])
  assert seen == list(range(8))  # Checked every 4 steps: stops after step 8, not at 15.
