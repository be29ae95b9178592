"""Tracing: spans, busy fractions and waits, the Chrome trace format, and the timeline plot."""

import json
import os
import sys
import threading

import pytest

from dvla_jax.swimlanes import tracing

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools"))
import plot_timeline  # noqa: E402  (a tool script, imported by path)


def _synthetic(tracer):
  t = tracer.t0
  tracer.add("sampling", "env_step g0", t + 0.0, t + 0.6)
  tracer.add("sampling", "wait actions", t + 0.6, t + 1.0, tracing.WAIT)
  tracer.add("gradient", "update 1", t + 0.2, t + 0.4)
  return t


def test_window_reports_busy_fraction_and_wait_seconds():
  tracer = tracing.Tracer()
  t = _synthetic(tracer)
  metrics = tracer.window(now=t + 2.0)
  assert metrics["lanes/sampling_busy"] == pytest.approx(0.3)
  assert metrics["lanes/sampling_wait_s"] == pytest.approx(0.4)
  assert metrics["lanes/gradient_busy"] == pytest.approx(0.1)
  assert metrics["lanes/gradient_wait_s"] == 0.0
  # A new window starts empty; totals keep everything.
  assert tracer.window()["lanes/sampling_wait_s"] == 0.0
  assert tracer.totals()["sampling"] == pytest.approx({"busy_s": 0.6, "wait_s": 0.4})


def test_span_records_lane_thread_and_kind():
  tracer = tracing.Tracer()

  def work():
    with tracer.span("inference", "act g1"):
      pass
    with tracer.wait("inference", "wait env step"):
      pass

  thread = threading.Thread(target=work, name="inference")
  thread.start()
  thread.join()
  assert [(s.lane, s.name, s.kind, s.thread) for s in tracer.spans] == [
      ("inference", "act g1", "busy", "inference"),
      ("inference", "wait env step", "wait", "inference")]
  assert all(s.end >= s.start for s in tracer.spans)


def test_disabled_tracer_and_span_cap():
  off = tracing.Tracer(enabled=False)
  with off.span("sampling", "x"):
    pass
  assert off.spans == [] and off.window() == {}
  capped = tracing.Tracer(max_spans=2)
  for _ in range(5):
    capped.add("sampling", "x", 0.0, 1.0)
  assert len(capped.spans) == 2 and capped.dropped == 3
  assert capped.totals()["sampling"]["busy_s"] == 5.0  # Metrics still count dropped spans.


def test_chrome_trace_has_one_named_row_per_lane(tmp_path):
  tracer = tracing.Tracer()
  _synthetic(tracer)
  path = tmp_path / "trace.json"
  tracer.write(str(path), {"pipeline": "async"})
  trace = json.loads(path.read_text())
  names = {e["tid"]: e["args"]["name"] for e in trace["traceEvents"]
           if e["ph"] == "M" and e["name"] == "thread_name"}
  assert sorted(names.values()) == ["gradient", "sampling"]
  spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
  assert len(spans) == 3
  update = next(e for e in spans if e["name"] == "update 1")
  assert names[update["tid"]] == "gradient" and update["cat"] == "busy"
  assert update["ts"] == pytest.approx(0.2e6) and update["dur"] == pytest.approx(0.2e6)
  assert trace["otherData"]["pipeline"] == "async"


def test_plot_timeline_writes_a_png(tmp_path):
  tracer = tracing.Tracer()
  _synthetic(tracer)
  trace, out = tmp_path / "trace.json", tmp_path / "timeline.png"
  tracer.write(str(trace))
  spans = plot_timeline.load_spans(str(trace))
  assert plot_timeline.busy_fractions(spans, 0.0, 1.0) == pytest.approx(
      {"sampling": 0.6, "gradient": 0.2})
  assert plot_timeline.main([f"--trace={trace}", f"--out={out}", "--start=0", "--end=1"]) == 0
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert plot_timeline.main([f"--trace={tmp_path / 'missing.json'}", f"--out={out}"]) == 2
