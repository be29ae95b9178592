r"""Draws a run's lane timeline (`<workdir>/trace.json`) as a swimlane chart.

    python tools/plot_timeline.py --trace=runs/demo/trace.json --out=timeline.png \
        [--start=10 --end=20]

One row per lane (sampling, inference, gradient, distribution, then any others), one colour
per kind of work (env step, act, record, update, transfer, ...); waits on channels are thin
grey bars under the work. The title gives each lane's busy fraction over the drawn window.
`--start/--end` (seconds from the start of the trace) zoom in; by default the last 20% of the
trace is drawn (the steady state, after compilation).
"""

import argparse
import json
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top

_ORDER = ("sampling", "inference", "gradient", "distribution")
_COLOURS = {
    "env_step": "#4c72b0", "reset": "#8172b3", "act": "#dd8452", "record": "#ccb974",
    "bootstrap": "#937860", "update": "#55a868", "publish": "#64b5cd", "transfer": "#c44e52",
    "evaluate": "#8c8c8c", "checkpoint": "#da8bc3",
}
_WAIT_COLOUR = "#d9d9d9"


def _kind(name: str) -> str:
  return name.split(" ")[0]


def load_spans(path: str) -> list[dict]:
  """The complete ("X") events of a Chrome trace file, with times in seconds."""
  with open(path, encoding="utf-8") as f:
    events = json.load(f)["traceEvents"]
  lanes = {e["tid"]: e["args"]["name"] for e in events
           if e.get("ph") == "M" and e.get("name") == "thread_name"}
  spans = []
  for e in events:
    if e.get("ph") != "X":
      continue
    lane = e.get("args", {}).get("lane") or lanes.get(e["tid"], str(e["tid"]))
    spans.append({"lane": lane, "name": e["name"], "kind": e.get("cat", "busy"),
                  "start": e["ts"] / 1e6, "end": (e["ts"] + e["dur"]) / 1e6})
  return spans


def busy_fractions(spans: list[dict], start: float, end: float) -> dict[str, float]:
  """Fraction of [start, end] each lane spends in work spans (clipped to the window)."""
  busy = defaultdict(float)
  for s in spans:
    if s["kind"] == "busy":
      busy[s["lane"]] += max(0.0, min(s["end"], end) - max(s["start"], start))
  return {lane: t / max(end - start, 1e-9) for lane, t in busy.items()}


def plot(spans: list[dict], out: str, start: float, end: float, title: str = "") -> None:
  """Writes the chart of the spans overlapping [start, end] to `out` (PNG)."""
  lanes = [l for l in _ORDER if any(s["lane"] == l for s in spans)]
  lanes += sorted({s["lane"] for s in spans} - set(lanes))
  row = {lane: i for i, lane in enumerate(lanes)}
  fig, ax = plt.subplots(figsize=(14, 1.0 + 0.8 * len(lanes)))
  seen = {}
  for s in spans:
    if s["end"] < start or s["start"] > end:
      continue
    y = len(lanes) - 1 - row[s["lane"]]
    width = s["end"] - s["start"]
    if s["kind"] == "wait":
      ax.broken_barh([(s["start"], width)], (y - 0.08, 0.16), color=_WAIT_COLOUR)
      seen.setdefault("wait", _WAIT_COLOUR)
      continue
    kind = _kind(s["name"])
    colour = _COLOURS.get(kind, "#999999")
    seen.setdefault(kind, colour)
    ax.broken_barh([(s["start"], width)], (y - 0.35, 0.7), color=colour, edgecolor="white",
                   linewidth=0.3)
  ax.set_yticks(range(len(lanes)))
  ax.set_yticklabels(list(reversed(lanes)))
  ax.set_xlim(start, end)
  ax.set_ylim(-0.6, len(lanes) - 0.4)
  ax.set_xlabel("seconds since the start of the run")
  busy = busy_fractions(spans, start, end)
  busy_text = ", ".join(f"{lane} {busy.get(lane, 0.0):.0%}" for lane in lanes)
  ax.set_title(f"{title + ': ' if title else ''}busy {busy_text}", fontsize=10)
  handles = [matplotlib.patches.Patch(color=c, label=k) for k, c in seen.items()]
  ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8,
            frameon=False)
  ax.grid(axis="x", alpha=0.3)
  fig.tight_layout()
  fig.savefig(out, dpi=120)
  plt.close(fig)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--trace", required=True, help="trace.json written by a run")
  parser.add_argument("--out", required=True, help="PNG to write")
  parser.add_argument("--start", type=float, default=None, help="window start (s)")
  parser.add_argument("--end", type=float, default=None, help="window end (s)")
  parser.add_argument("--title", default="", help="chart title prefix")
  args = parser.parse_args(argv)
  try:
    spans = load_spans(args.trace)
  except (OSError, ValueError, KeyError) as e:
    print(f"plot_timeline: cannot read {args.trace}: {e}", file=sys.stderr)
    return 2
  if not spans:
    print(f"plot_timeline: {args.trace} holds no spans", file=sys.stderr)
    return 2
  first = min(s["start"] for s in spans)
  last = max(s["end"] for s in spans)
  end = last if args.end is None else args.end
  start = first + 0.8 * (last - first) if args.start is None else args.start
  plot(spans, args.out, start, end, args.title)
  print(f"wrote {args.out} ({start:.2f}s to {end:.2f}s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
