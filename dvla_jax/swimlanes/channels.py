"""Channels between lanes: bounded queues for the data plane, a latest-wins mailbox for control.

Every blocking call waits in short polls (`poll_s`) and checks the shared stop event between
them, so a lane blocked on an empty or full channel notices within `poll_s` that another lane
failed or the run is over and raises `Stopped`. A wait that lasts longer than
`stall_timeout_s` raises `StallError` instead of hanging: the deadlock guard.
"""

import queue
import threading
import time
from typing import Any, Callable, Generic, Optional, TypeVar

T = TypeVar("T")


class Stopped(Exception):
  """The shared stop event was set while a lane was waiting."""


class StallError(RuntimeError):
  """A wait lasted longer than the stall timeout."""


class Channel(Generic[T]):
  """A bounded FIFO between two lanes (a `queue.Queue` with stop-aware, timed waits)."""

  def __init__(self, name: str, maxsize: int, stop: threading.Event, poll_s: float = 0.05,
               stall_timeout_s: float = 600.0):
    """Args:
      name: for error messages.
      maxsize: capacity; `put` blocks while the channel is full (backpressure).
      stop: the run's shared stop event.
      poll_s: how often a blocked call checks `stop`.
      stall_timeout_s: a single call blocked longer than this raises StallError.
    """
    if maxsize < 1:
      raise ValueError(f"channel {name}: maxsize={maxsize}; allowed: >= 1")
    self.name = name
    self._queue: queue.Queue = queue.Queue(maxsize)
    self._stop = stop
    self._poll_s = poll_s
    self._stall_timeout_s = stall_timeout_s

  def _deadline_passed(self, start: float, what: str) -> None:
    if time.monotonic() - start > self._stall_timeout_s:
      raise StallError(f"channel {self.name}: {what} for more than {self._stall_timeout_s:g}s")

  def put(self, item: T) -> None:
    """Appends `item`, waiting while the channel is full.

    Raises:
      Stopped: the stop event was set.
      StallError: the channel stayed full for longer than the stall timeout.
    """
    start = time.monotonic()
    while True:
      if self._stop.is_set():
        raise Stopped(self.name)
      try:
        self._queue.put(item, timeout=self._poll_s)
        return
      except queue.Full:
        self._deadline_passed(start, "full")

  def get(self, until: Optional[Callable[[], bool]] = None) -> Optional[T]:
    """Removes and returns the oldest item, waiting while the channel is empty.

    Args:
      until: checked at every poll while the channel is empty; once it returns True the
        call gives up and returns None (e.g. to park the lane for a memory census).

    Raises:
      Stopped: the stop event was set.
      StallError: the channel stayed empty for longer than the stall timeout.
    """
    start = time.monotonic()
    while True:
      if self._stop.is_set():
        raise Stopped(self.name)
      try:
        return self._queue.get(timeout=self._poll_s)
      except queue.Empty:
        if until is not None and until():
          return None
        self._deadline_passed(start, "empty")

  def get_nowait(self) -> Optional[T]:
    """The oldest item, or None if the channel is empty."""
    try:
      return self._queue.get_nowait()
    except queue.Empty:
      return None

  def qsize(self) -> int:
    return self._queue.qsize()


class Mailbox:
  """A latest-wins slot on the control plane: a newer version replaces an unread older one.

  The writer never blocks; readers either peek at the newest version (`latest`) or wait for
  one newer than what they hold (`wait_newer`).
  """

  def __init__(self, name: str, stop: threading.Event, poll_s: float = 0.05,
               stall_timeout_s: float = 600.0):
    self.name = name
    self._stop = stop
    self._poll_s = poll_s
    self._stall_timeout_s = stall_timeout_s
    self._cond = threading.Condition()
    self._version = -1
    self._value: Any = None
    self.replaced = 0  # Versions overwritten before any reader saw them.
    self._read_version = -1

  def put(self, version: int, value: Any) -> None:
    """Publishes `value` as `version`; ignored if a newer version is already there."""
    with self._cond:
      if version <= self._version:
        return
      if self._version > self._read_version:
        self.replaced += 1
      self._version, self._value = version, value
      self._cond.notify_all()

  @property
  def version(self) -> int:
    """The newest published version (-1 before the first `put`)."""
    return self._version

  def latest(self) -> tuple[int, Any]:
    """(version, value) of the newest publication without waiting ((-1, None) if none)."""
    with self._cond:
      self._read_version = max(self._read_version, self._version)
      return self._version, self._value

  def wait_newer(self, version: int) -> tuple[int, Any]:
    """Waits for a version newer than `version` and returns (version, value).

    Raises:
      Stopped: the stop event was set.
      StallError: nothing newer arrived within the stall timeout.
    """
    start = time.monotonic()
    with self._cond:
      while self._version <= version:
        if self._stop.is_set():
          raise Stopped(self.name)
        if time.monotonic() - start > self._stall_timeout_s:
          raise StallError(f"mailbox {self.name}: no version after {version} for more than "
                           f"{self._stall_timeout_s:g}s")
        self._cond.wait(self._poll_s)
      self._read_version = max(self._read_version, self._version)
      return self._version, self._value


def wait_for(take: Callable[[float], Optional[T]], what: str, stop: threading.Event,
             poll_s: float = 0.05, stall_timeout_s: float = 600.0,
             idle: Optional[Callable[[], None]] = None) -> T:
  """Polls `take(timeout)` (None: nothing yet) with the channels' stop and stall rules.

  For waits on something other than a channel, e.g. a free slot of a `memory.SlotPool`.
  `idle()`, if given, runs after every empty poll (e.g. to park the lane for a census).

  Raises:
    Stopped: the stop event was set.
    StallError: nothing came for longer than the stall timeout.
  """
  start = time.monotonic()
  while True:
    if stop.is_set():
      raise Stopped(what)
    item = take(poll_s)
    if item is not None:
      return item
    if idle is not None:
      idle()
    if time.monotonic() - start > stall_timeout_s:
      raise StallError(f"{what}: nothing for more than {stall_timeout_s:g}s")
