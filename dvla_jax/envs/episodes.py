"""The episode loop and the episode reducer: every evaluation, expert run and recording.

`play` runs a batch of worlds from their reset state until each has finished its first
episode, or `limit` policy steps have passed; `step_fn` is the caller's policy and env step
together, so the same loop serves the trained policy (sampled or argmax: evaluation, the
evaluate CLI, videos), a restored checkpoint and the scripted expert (its success rates,
demonstration files and the warm start's recorded rows). `Totals` (reduced by `accumulate`)
holds what an episode scores: it ends at its first `done` (success, or a termination the env
reports, or the time limit of an auto-resetting env), and nothing after that counts, so
auto-resets and steps of a finished world are ignored alike.
"""

from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class Totals:
  """Per-world scores of the first episode, float32 [B] each.

  Attributes:
    success: 1 where the episode succeeded.
    ret: the episode's summed reward.
    length: policy steps the episode took.
    active: 1 while the episode runs.
  """

  success: jax.Array
  ret: jax.Array
  length: jax.Array
  active: jax.Array

  @classmethod
  def zeros(cls, batch: int) -> "Totals":
    zero = jnp.zeros((batch,), jnp.float32)
    return cls(success=zero, ret=zero, length=zero, active=jnp.ones_like(zero))


@jax.jit
def accumulate(totals: Totals, step_success: jax.Array, reward: jax.Array,
               done: jax.Array) -> Totals:
  """`totals` after one more step; a world counts only while its first episode runs."""
  active = totals.active
  return Totals(success=jnp.maximum(totals.success, active * (step_success > 0)),
                ret=totals.ret + active * reward, length=totals.length + active,
                active=active * (1.0 - jnp.maximum((done > 0), (step_success > 0))))


def play(state: Any, step_fn: Callable[[Any, int], Any], limit: int,
         on_step: Optional[Callable[[int, Any, Any], None]] = None,
         check_every: int = 4, until_done: bool = True) -> tuple[Any, Totals]:
  """Steps every world until all have finished their first episode, at most `limit` steps.

  Args:
    state: the batched env state after reset (`reward` [B]).
    step_fn: `(state, t) -> next state`: act at step t and step the env.
    limit: policy steps at most.
    on_step: called with `(t, state, next state)` after each step (e.g. to record frames).
    check_every: steps between checks that every world has finished (a check waits for the
      device).
    until_done: stop once every world's first episode is over; False plays all `limit` steps
      (recording whole rows of an auto-resetting env, or fixed-length arrays).

  Returns:
    (the last state, the first episode's `Totals`).
  """
  totals = Totals.zeros(state.reward.shape[0])
  for t in range(limit):
    nxt = step_fn(state, t)
    totals = accumulate(totals, nxt.metrics["success"], nxt.reward, nxt.done)
    if on_step is not None:
      on_step(t, state, nxt)
    state = nxt
    if (until_done and (t + 1) % check_every == 0
        and not bool(np.any(np.asarray(totals.active) > 0))):
      break
  return state, totals
