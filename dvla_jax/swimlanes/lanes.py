"""Lane threads under one supervisor: a shared stop event, the first error, bounded joins.

Each lane is a host thread running a loop that waits only on channels (`channels.py`). When
any lane raises, the supervisor records the first error and sets the stop event; every other
lane sees it at its next wait (within `poll_s`) and returns, and `join` re-raises the first
error as a `LaneError` naming the lane. The same event stops the lanes for a normal finish or
a preemption (SIGTERM).
"""

import dataclasses
import threading
import time
from typing import Callable, Optional

from absl import logging

from dvla_jax.swimlanes.channels import Stopped

LANES = ("sampling", "inference", "gradient", "distribution")


class LaneError(RuntimeError):
  """A lane failed; `lane` names it and `__cause__` is the original exception."""

  def __init__(self, lane: str, error: BaseException):
    super().__init__(f"{lane} lane failed: {type(error).__name__}: {error}")
    self.lane = lane


class InjectedFault(RuntimeError):
  """The error the fault-injection test hook raises."""


@dataclasses.dataclass(frozen=True)
class FaultPlan:
  """Test hook: make lane `lane` raise once it has done `after` units of work.

  Attributes:
    lane: a lane name, or "" for no fault.
    after: units of work (env steps, act calls, updates, weight transfers) before the error.
  """

  lane: str = ""
  after: int = 0

  def check(self, lane: str, done: int) -> None:
    """Raises InjectedFault if `lane` is the faulty lane and has done `after` units."""
    if lane == self.lane and done >= self.after:
      raise InjectedFault(f"fault injected into the {lane} lane after {done} steps")


class Supervisor:
  """Starts lane threads and stops them all together."""

  def __init__(self, stop: Optional[threading.Event] = None):
    self.stop = stop or threading.Event()
    self._threads: list[threading.Thread] = []
    self._lock = threading.Lock()
    self.first_error: Optional[LaneError] = None
    self.error_time: Optional[float] = None

  def spawn(self, lane: str, loop: Callable[[], None]) -> None:
    """Runs `loop()` on a new daemon thread named `lane`; `Stopped` counts as a clean exit."""

    def run():
      try:
        loop()
      except Stopped:
        pass
      except BaseException as e:  # pylint: disable=broad-except
        self.fail(lane, e)

    thread = threading.Thread(target=run, name=lane, daemon=True)
    self._threads.append(thread)
    thread.start()

  def fail(self, lane: str, error: BaseException) -> None:
    """Records `error` if it is the first one, and stops every lane."""
    with self._lock:
      if self.first_error is None:
        self.first_error = LaneError(lane, error)
        self.first_error.__cause__ = error
        self.error_time = time.monotonic()
        logging.error("%s", self.first_error)
    self.stop.set()

  def alive(self) -> list[str]:
    """Names of lanes whose threads still run."""
    return [t.name for t in self._threads if t.is_alive()]

  def join(self, timeout_s: float = 30.0) -> None:
    """Stops the lanes, waits up to `timeout_s` for them, and raises the first error.

    Raises:
      LaneError: a lane failed (the first failure; later ones are consequences).
      TimeoutError: a lane did not return within `timeout_s` after the stop.
    """
    self.stop.set()
    deadline = time.monotonic() + timeout_s
    for thread in self._threads:
      thread.join(max(deadline - time.monotonic(), 0.0))
    if self.first_error is not None:
      raise self.first_error
    stuck = self.alive()
    if stuck:
      raise TimeoutError(f"lanes {', '.join(stuck)} did not stop within {timeout_s:g}s")
