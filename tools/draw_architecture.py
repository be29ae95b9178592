r"""Draws the architecture picture in README: planes, lanes, pools and the weight broadcast.

    python tools/draw_architecture.py --out=docs/architecture.png

Three columns are the planes (sim, actor and learner meshes); inside them, the boxes are what
each lane works on and the two memory pools; blue arrows are the data plane (bounded
channels), red dashed ones the control plane (the latest-wins weight mailbox). The strip at
the bottom is the topology-aware broadcast across hosts. Matplotlib only, no data: the picture
is drawn from the layout below, so it changes with this file.
"""

import argparse
import sys

import matplotlib

matplotlib.use("Agg")
from matplotlib import patches  # noqa: E402  pylint: disable=g-import-not-at-top
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top

_DATA = "#1f5fa8"
_CONTROL = "#c0392b"
_PLANES = {  # name: (x, width, background, title, mesh)
    "sim": (1.0, 29.0, "#eaf2fb", "sim plane", "sim mesh, axis data"),
    "actor": (35.5, 29.0, "#fdf1e6", "actor plane", "actor mesh, axes data x fsdp x tensor"),
    "learner": (70.0, 29.0, "#eaf6ec", "learner plane",
                "learner mesh, axes data x fsdp x tensor"),
}
_STATIC = "#fff6c7"  # static pool boxes
_DYNAMIC = "#e8e0f5"  # dynamic pool boxes
_WORK = "white"


def _box(ax, x, y, w, h, text, face=_WORK, edge="#444444", size=9.5, weight="normal",
         style="round,pad=0.3,rounding_size=0.8", lw=1.2):
  ax.add_patch(patches.FancyBboxPatch((x, y), w, h, boxstyle=style, facecolor=face,
                                      edgecolor=edge, linewidth=lw))
  ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size,
          fontweight=weight, wrap=True)


def _arrow(ax, start, end, colour, text="", dashed=False, rad=0.0, text_at=0.5,
           offset=(0.0, 1.2), size=8.5):
  ax.add_patch(patches.FancyArrowPatch(
      start, end, arrowstyle="-|>", mutation_scale=16, color=colour, linewidth=2.0,
      linestyle=(0, (5, 3)) if dashed else "-", connectionstyle=f"arc3,rad={rad}"))
  if text:
    x = start[0] + (end[0] - start[0]) * text_at + offset[0]
    y = start[1] + (end[1] - start[1]) * text_at + offset[1]
    ax.text(x, y, text, ha="center", va="center", fontsize=size, color=colour,
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1.0})


def _lane(ax, x, y, text):
  ax.text(x, y, text, ha="left", va="center", fontsize=9, fontstyle="italic", color="#555555")


def draw(out: str) -> None:
  """Draws the picture into `out` (PNG)."""
  fig, ax = plt.subplots(figsize=(15, 9.9))
  ax.set_xlim(0, 100)
  ax.set_ylim(0, 66)
  ax.axis("off")
  ax.text(50, 64.8, "dvla_jax: asynchronous RL fine-tuning of a VLA policy, one program on "
          "three planes", ha="center", fontsize=14, fontweight="bold")

  for x, w, face, title, mesh in _PLANES.values():
    ax.add_patch(patches.FancyBboxPatch((x, 22.0), w, 39.5, boxstyle="round,pad=0.2",
                                        facecolor=face, edgecolor="#999999", linewidth=1.0))
    ax.text(x + w / 2, 60.2, title, ha="center", fontsize=11, fontweight="bold")
    ax.text(x + w / 2, 58.5, mesh, ha="center", fontsize=8.5, color="#444444")

  # Sim plane: env groups (one simulates while another is in inference).
  _lane(ax, 2.5, 56.0, "sampling lane (thread): steps the env groups")
  _box(ax, 3.5, 45.0, 24.0, 8.0, "env group A\nMJX Warp physics + batch renderer\n"
       "its worlds on one sim device")
  _box(ax, 3.5, 33.0, 24.0, 8.0, "env group B\nMJX Warp physics + batch renderer\n"
       "its worlds on one sim device")
  ax.text(15.5, 27.0, "two groups or more: sampling of one group\noverlaps inference of "
          "another (double buffering)", ha="center", fontsize=8.5, color="#444444")

  # Actor plane: inference, weight double buffer (static pool), slot ring (dynamic pool).
  _lane(ax, 37.0, 56.0, "inference lane (thread): acts, records steps")
  _box(ax, 38.0, 47.5, 24.0, 6.5, "VLA policy forward (jit)\naction tokens, log-probs, value")
  _box(ax, 38.0, 35.5, 24.0, 8.0, "actor weights, double buffer\nactive v  |  incoming v+1\n"
       "allocated once", face=_STATIC)
  _box(ax, 38.0, 23.5, 24.0, 9.0, "rollout slot ring: K slots\n[T, envs, ...] per field, "
       "written in place by\nthe inference lane's donated writes;\nan empty ring is "
       "backpressure",
       face=_DYNAMIC)
  _arrow(ax, (50.0, 43.8), (50.0, 47.3), "#555555", "swap between steps", offset=(7.0, 0.0),
         size=8)

  # Learner plane: train state (static pool) and the update.
  _lane(ax, 71.5, 56.0, "gradient lane (thread): one update per full slot")
  _box(ax, 72.5, 46.0, 24.0, 7.5, "colocated: the planes share devices\n"
       "disaggregated: disjoint device sets\nmulti-host: each host holds a slice",
       face="#f4f4f4", size=8.5, edge="#999999")
  _box(ax, 72.5, 35.5, 24.0, 8.0, "learner train state\nparams + Adam, FSDP/TP sharded\n"
       "donated, updated in place", face=_STATIC)
  _box(ax, 72.5, 23.5, 24.0, 9.0, "GAE + decoupled PPO update (jit)\nproximal/behaviour "
       "weight,\nstaleness bound in policy versions")
  _arrow(ax, (84.5, 32.7), (84.5, 35.3), "#555555")

  # Data plane.
  _arrow(ax, (27.7, 50.2), (37.8, 51.2), _DATA, "observations", offset=(0, 1.5))
  _arrow(ax, (37.8, 49.2), (27.7, 48.2), _DATA, "action chunks", offset=(0, -1.5))
  _arrow(ax, (27.7, 37.5), (37.8, 48.6), _DATA, rad=-0.2)
  _arrow(ax, (62.2, 30.0), (72.3, 30.0), _DATA, "full slots", offset=(0, 1.5))
  _arrow(ax, (72.3, 26.0), (62.2, 26.0), _DATA, "free slots", offset=(0, -1.5))
  # Control plane: the distribution lane.
  _arrow(ax, (72.3, 39.5), (62.2, 39.5), _CONTROL, "weights v+1", dashed=True,
         offset=(0, 1.5))
  ax.text(67.2, 36.9, "distribution\nlane: latest-\nwins mailbox", ha="center",
          va="center", fontsize=7.5, color=_CONTROL)

  # Legend.
  ax.plot([2, 6], [18.8, 18.8], color=_DATA, linewidth=2.0)
  ax.text(6.8, 18.8, "data plane: bounded channels (observations, actions, trajectories "
          "with their policy version)", va="center", fontsize=9)
  ax.plot([2, 6], [16.6, 16.6], color=_CONTROL, linewidth=2.0, linestyle=(0, (5, 3)))
  ax.text(6.8, 16.6, "control plane: weights and versions; inference keeps acting with v "
          "while v+1 is copied", va="center", fontsize=9)
  for y, face, text in ((18.8, _STATIC, "static pool: allocated once, donated updates"),
                        (16.6, _DYNAMIC, "dynamic pool: fixed ring of rollout slots")):
    ax.add_patch(patches.Rectangle((70.0, y - 0.7), 3.0, 1.4, facecolor=face,
                                   edgecolor="#444444"))
    ax.text(73.8, y, text, va="center", fontsize=9)

  # Topology-aware broadcast across hosts.
  ax.add_patch(patches.FancyBboxPatch((1.0, 0.4), 98.0, 13.6, boxstyle="round,pad=0.2",
                                      facecolor="#f7f7f7", edgecolor="#999999"))
  ax.text(50.0, 12.9, "weight broadcast across hosts (topology-aware): each byte crosses "
          "each host boundary at most once, then fans out over the fast links inside a host",
          ha="center", fontsize=9.5, fontweight="bold")
  hosts = [(4.0, "host 0: learner devices (FSDP shards)"),
           (38.0, "host 1: actor devices"), (72.0, "host 2: actor devices")]
  leaders = {}
  for x, label in hosts:
    ax.add_patch(patches.FancyBboxPatch((x, 1.0), 26.0, 8.0, boxstyle="round,pad=0.2",
                                        facecolor="white", edgecolor="#666666"))
    ax.text(x + 13.0, 2.2, label, ha="center", fontsize=8.5)
    learner = x == 4.0
    for i in range(4):
      left = x + 1.5 + 6.0 * i
      ax.add_patch(patches.Rectangle((left, 4.2), 5.0, 2.6,
                                     facecolor="#d6ead9" if learner else "#fbe3cf",
                                     edgecolor="#666666"))
      ax.text(left + 2.5, 5.5, "leader" if (i == 0 and not learner) else f"d{i}",
              ha="center", va="center", fontsize=7.5)
      if not learner and i:
        _arrow(ax, (x + 4.0, 6.8), (left + 2.5, 6.8), "#888888", rad=-0.25)
    leaders[x] = (x + 1.5, x + 4.0)
  _arrow(ax, (29.7, 5.5), (39.3, 5.5), _CONTROL, "one copy", dashed=True, offset=(0, 1.4),
         size=8)
  _arrow(ax, (30.5, 8.2), (76.0, 7.0), _CONTROL, "one copy", dashed=True, rad=-0.1,
         text_at=0.5, offset=(0, 3.4), size=8)

  fig.savefig(out, dpi=100, bbox_inches="tight")
  plt.close(fig)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default="docs/architecture.png", help="PNG file to write")
  args = parser.parse_args(argv)
  draw(args.out)
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
