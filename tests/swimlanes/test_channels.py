"""Channels, mailboxes and the lane supervisor: ordering, backpressure, stop, stall, first error."""

import threading
import time

import pytest

from dvla_jax.swimlanes import channels
from dvla_jax.swimlanes import lanes


def _channel(size=2, stall=5.0):
  stop = threading.Event()
  return channels.Channel("test", size, stop, poll_s=0.01, stall_timeout_s=stall), stop


def test_channel_is_fifo_and_bounded():
  ch, _ = _channel(size=2)
  ch.put(1)
  ch.put(2)
  assert ch.qsize() == 2
  done = threading.Event()

  def producer():
    ch.put(3)  # Blocks until a slot frees up.
    done.set()

  threading.Thread(target=producer, daemon=True).start()
  assert not done.wait(0.1)
  assert ch.get() == 1
  assert done.wait(1.0)
  assert [ch.get(), ch.get()] == [2, 3]
  assert ch.get_nowait() is None


@pytest.mark.parametrize("blocked", ["get", "put"])
def test_blocked_call_raises_stopped_soon_after_stop(blocked):
  ch, stop = _channel(size=1)
  if blocked == "put":
    ch.put(0)
  errors = []

  def waiter():
    try:
      ch.get() if blocked == "get" else ch.put(1)
    except channels.Stopped as e:
      errors.append((e, time.monotonic()))

  thread = threading.Thread(target=waiter, daemon=True)
  thread.start()
  time.sleep(0.05)
  stopped_at = time.monotonic()
  stop.set()
  thread.join(1.0)
  assert not thread.is_alive()
  assert len(errors) == 1 and errors[0][1] - stopped_at < 0.5


def test_stall_timeout_raises_instead_of_hanging():
  ch, _ = _channel(stall=0.1)
  start = time.monotonic()
  with pytest.raises(channels.StallError, match="channel test: empty for more than 0.1s"):
    ch.get()
  assert time.monotonic() - start < 1.0


def test_mailbox_latest_wins_and_ignores_older_versions():
  box = channels.Mailbox("weights", threading.Event(), poll_s=0.01)
  assert box.latest() == (-1, None)
  box.put(1, "v1")
  box.put(2, "v2")  # v1 was never read: replaced.
  box.put(1, "old")  # Older than what is there: ignored.
  assert box.latest() == (2, "v2")
  assert box.replaced == 1
  box.put(3, "v3")  # v2 was read: not counted as replaced.
  assert box.replaced == 1


def test_mailbox_wait_newer_wakes_on_put_and_on_stop():
  stop = threading.Event()
  box = channels.Mailbox("weights", stop, poll_s=0.01)
  box.put(0, "v0")
  threading.Timer(0.05, lambda: box.put(1, "v1")).start()
  assert box.wait_newer(0) == (1, "v1")
  threading.Timer(0.05, stop.set).start()
  with pytest.raises(channels.Stopped):
    box.wait_newer(1)


def test_fault_plan_raises_only_in_its_lane_after_enough_work():
  plan = lanes.FaultPlan("gradient", after=2)
  plan.check("sampling", 5)
  plan.check("gradient", 1)
  with pytest.raises(lanes.InjectedFault, match="gradient lane after 2"):
    plan.check("gradient", 2)
  lanes.FaultPlan().check("gradient", 10**6)


def test_supervisor_stops_every_lane_on_the_first_error():
  sup = lanes.Supervisor()
  ch = channels.Channel("idle", 1, sup.stop, poll_s=0.01)

  def failing():
    time.sleep(0.05)
    raise ValueError("boom")

  def blocked():
    ch.get()  # Would wait forever without the stop event.

  for name in ("sampling", "inference", "distribution"):
    sup.spawn(name, blocked)
  sup.spawn("gradient", failing)
  assert sup.stop.wait(2.0)
  start = time.monotonic()
  with pytest.raises(lanes.LaneError, match="gradient lane failed: ValueError: boom") as error:
    sup.join(timeout_s=5.0)
  assert time.monotonic() - start < 1.0
  assert error.value.lane == "gradient"
  assert isinstance(error.value.__cause__, ValueError)
  assert sup.alive() == []


def test_supervisor_clean_stop_raises_nothing():
  sup = lanes.Supervisor()
  ch = channels.Channel("idle", 1, sup.stop, poll_s=0.01)
  sup.spawn("sampling", ch.get)
  sup.join(timeout_s=2.0)
  assert sup.first_error is None and sup.alive() == []
