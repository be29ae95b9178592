"""Lane timelines: spans of work and of waiting, Chrome/Perfetto trace JSON, busy fractions.

Each lane wraps its work in `tracer.span(lane, name)` and its channel waits in
`tracer.wait(lane, name)`. The tracer keeps the spans (up to `max_spans`) for the trace file
and, separately, running totals per lane that `window()` turns into metrics:

  lanes/<lane>_busy    fraction of the window's wall time the lane spent in work spans
  lanes/<lane>_wait_s  seconds the lane spent waiting on channels in the window

The trace JSON is the Chrome trace-event format (complete "X" events, one thread row per
lane), which https://ui.perfetto.dev and chrome://tracing open; `tools/plot_timeline.py`
draws it as a PNG.
"""

import collections
import contextlib
import dataclasses
import json
import threading
import time
from typing import Iterator, Optional

BUSY = "busy"
WAIT = "wait"


@dataclasses.dataclass(frozen=True)
class Span:
  """One interval of a lane: work (`kind == "busy"`) or a channel wait (`"wait"`).

  Attributes:
    lane: lane name ("sampling", "inference", "gradient", "distribution", ...).
    name: what the lane did, e.g. "env_step g0" or "wait slot".
    kind: "busy" or "wait".
    start: `time.perf_counter()` at the start.
    end: `time.perf_counter()` at the end.
    thread: name of the thread that ran it.
  """

  lane: str
  name: str
  kind: str
  start: float
  end: float
  thread: str


class Tracer:
  """Thread-safe span recorder; a disabled tracer records nothing and costs nothing."""

  def __init__(self, enabled: bool = True, max_spans: int = 200_000):
    self.enabled = enabled
    self.max_spans = max_spans
    self.t0 = time.perf_counter()
    self.spans: list[Span] = []
    self.dropped = 0
    self._lock = threading.Lock()
    self._lanes: list[str] = []
    self._busy = collections.defaultdict(float)
    self._wait = collections.defaultdict(float)
    self._total_busy = collections.defaultdict(float)
    self._total_wait = collections.defaultdict(float)
    self._window_start = self.t0

  def add(self, lane: str, name: str, start: float, end: float, kind: str = BUSY) -> None:
    """Records a finished span."""
    if not self.enabled:
      return
    span = Span(lane, name, kind, start, end, threading.current_thread().name)
    with self._lock:
      if lane not in self._lanes:
        self._lanes.append(lane)
      totals = (self._busy, self._total_busy) if kind == BUSY else (self._wait, self._total_wait)
      for total in totals:
        total[lane] += end - start
      if len(self.spans) < self.max_spans:
        self.spans.append(span)
      else:
        self.dropped += 1

  @contextlib.contextmanager
  def span(self, lane: str, name: str, kind: str = BUSY) -> Iterator[None]:
    """Context manager recording the enclosed block as a span of `lane`."""
    if not self.enabled:
      yield
      return
    start = time.perf_counter()
    try:
      yield
    finally:
      self.add(lane, name, start, time.perf_counter(), kind)

  def wait(self, lane: str, name: str):
    """`span` of kind "wait": the lane is blocked on a channel or mailbox."""
    return self.span(lane, name, WAIT)

  @property
  def lanes(self) -> list[str]:
    """Lane names in order of first appearance."""
    return list(self._lanes)

  def window(self, now: Optional[float] = None) -> dict[str, float]:
    """Busy fraction and wait seconds per lane since the previous call; starts a new window.

    Args:
      now: the window's end (`time.perf_counter()` time); default: now.
    """
    now = time.perf_counter() if now is None else now
    with self._lock:
      elapsed = max(now - self._window_start, 1e-9)
      metrics = {}
      for lane in self._lanes:
        metrics[f"lanes/{lane}_busy"] = min(self._busy[lane] / elapsed, 1.0)
        metrics[f"lanes/{lane}_wait_s"] = self._wait[lane]
      self._busy.clear()
      self._wait.clear()
      self._window_start = now
    return metrics

  def reset_window(self) -> None:
    """Starts a new `window` now, discarding what the current one holds."""
    self.window()

  def totals(self) -> dict[str, dict[str, float]]:
    """Seconds of work and of waiting per lane since the tracer was made."""
    with self._lock:
      return {lane: {"busy_s": self._total_busy[lane], "wait_s": self._total_wait[lane]}
              for lane in self._lanes}

  def chrome_trace(self, metadata: Optional[dict] = None) -> dict:
    """The spans as a Chrome trace-event dict (times in microseconds since the tracer began)."""
    with self._lock:
      spans = list(self.spans)
      lanes = list(self._lanes)
    tid = {lane: i + 1 for i, lane in enumerate(lanes)}
    events = []
    for lane in lanes:
      events.append({"name": "thread_name", "ph": "M", "pid": 1, "tid": tid[lane],
                     "args": {"name": lane}})
      events.append({"name": "thread_sort_index", "ph": "M", "pid": 1, "tid": tid[lane],
                     "args": {"sort_index": tid[lane]}})
    for s in spans:
      events.append({
          "name": s.name, "cat": s.kind, "ph": "X", "pid": 1, "tid": tid[s.lane],
          "ts": round((s.start - self.t0) * 1e6, 1),
          "dur": round((s.end - s.start) * 1e6, 1),
          "args": {"lane": s.lane, "thread": s.thread}})
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"dropped_spans": self.dropped, **(metadata or {})}}

  def write(self, path: str, metadata: Optional[dict] = None) -> None:
    """Writes `chrome_trace()` as JSON to `path`."""
    with open(path, "w", encoding="utf-8") as f:
      json.dump(self.chrome_trace(metadata), f)
