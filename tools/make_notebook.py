r"""Writes `experiments/colab_demo.ipynb` from the cell sources below (outputs left empty).

    python tools/make_notebook.py            # (re)write the notebook
    python tools/make_notebook.py --check    # exit 1 if the notebook differs from this script

The notebook is generated so that a review reads plain Python here rather than notebook
JSON; edit the cells in this file and run it again. `tests/test_notebook.py` executes the
notebook headless (nbclient) with `SIZE = "tiny"`.
"""

import argparse
import os
import sys

import nbformat

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(_ROOT, "experiments", "colab_demo.ipynb")

# (kind, source, tags). The "parameters" tag marks the cell a runner may replace.
_CELLS = [
    ("markdown", """\
# dvla_jax on Colab: from an MJX task to an RL-fine-tuned VLA policy

This notebook walks through the whole loop on one accelerator (or a CPU):

1. install and check the accelerator,
2. build the `touch_cube` task from the registry and look at its camera frames,
3. warm-start a small Vision-Language-Action policy by behaviour cloning of the task's
   scripted expert,
4. fine-tune it with PPO on the four-lane asynchronous pipeline, with a live plot,
5. draw the swimlane timeline of that run,
6. restore the checkpoint and watch a rollout.

`SIZE = "tiny"` runs in a few minutes on a CPU (CI runs it that way); `"full"` uses the CPU
demo's sizes (`configs/demo.py`), meant for a GPU runtime.""", ()),
    ("code", """\
SIZE = "full"  # "tiny" (minutes on a CPU) or "full" (the demo's sizes; use a GPU runtime)
WORKDIR = "runs/colab"  # the runs' directories go under it""", ("parameters",)),
    ("markdown", """\
## 1. Install

Skipped when `dvla_jax` is already importable (a local checkout with its `.venv`). Elsewhere
(Colab) it clones the repository and installs it with pip, `pip install -e ".[cuda]"` on a GPU
runtime (the pinned requirements, and the CUDA build of jax), then works from the checkout,
where `configs/` and `tools/` live: set `REPO_URL` in the cell below to where the repository
is hosted.""", ()),
    ("code", """\
import importlib.util
import os
import shutil
import subprocess
import sys

REPO_URL = ""  # Where the repository is hosted, e.g. "https://github.com/ORG/dvla_jax.git".


def _repo_root(start):
  path = os.path.abspath(start)
  while path != os.path.dirname(path):
    if os.path.isfile(os.path.join(path, "dvla_jax", "__init__.py")):
      return path
    path = os.path.dirname(path)
  return None


ROOT = _repo_root(os.getcwd())
if ROOT is None and importlib.util.find_spec("dvla_jax") is None:
  if not REPO_URL:
    raise ValueError("dvla_jax is not installed here: set REPO_URL to the repository's URL")
  subprocess.run(["git", "clone", "--depth=1", REPO_URL, "dvla_jax"], check=True)
  ROOT = os.path.abspath("dvla_jax")
  target = ROOT + ("[cuda]" if shutil.which("nvidia-smi") else "")
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", target], check=True)
else:
  print("dvla_jax is importable; nothing to install")
os.chdir(ROOT)
sys.path.insert(0, ROOT)
print("working in", ROOT)""", ()),
    ("markdown", "## 2. The accelerator", ()),
    ("code", """\
import jax

devices = jax.devices()
print(f"JAX {jax.__version__}, backend {jax.default_backend()}: {devices}")
if jax.default_backend() == "cpu":
  print("No accelerator: fine for SIZE = 'tiny'. On Colab pick a GPU runtime for 'full'.")""",
     ()),
    ("markdown", """\
## 3. A task from the registry

Each task is an MJX scene with a batch renderer (MJX Warp). `touch_cube` asks the gripper to
touch the cube the instruction names by colour; the policy sees the camera image, the
instruction and the gripper's proprioception.""", ()),
    ("code", """\
import matplotlib.pyplot as plt
import numpy as np

from dvla_jax import envs

print("tasks:", ", ".join(envs.list_tasks()))
env = envs.make("touch_cube", envs.default_config("touch_cube", num_worlds=4, image_size=64))
state = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.key(0), 4))
fig, axes = plt.subplots(1, 4, figsize=(12, 3.4))
for i, ax in enumerate(axes):
  ax.imshow(np.asarray(state.obs["image"][i, 0]))
  # The env names its instruction by index into its table.
  ax.set_title(env.instruction_table()[int(state.obs["instruction"][i])], fontsize=9)
  ax.axis("off")
plt.show()""", ()),
    ("markdown", """\
## 4. The run configuration

The CPU demo's config file, switched to the asynchronous pipeline (sampling, inference,
gradient and distribution lanes; two env groups so that one simulates while the other is in
inference). `config_check.validate` is what `python -m dvla_jax.main` runs at start-up.""",
     ()),
    ("code", """\
import importlib.util as _util

from dvla_jax.config import config_check
from dvla_jax.programs import builders

_spec = _util.spec_from_file_location("demo_config", "configs/demo.py")
_demo = _util.module_from_spec(_spec)
_spec.loader.exec_module(_demo)
TINY = SIZE == "tiny"
rl_config = _demo.get_config("tiny" if TINY else "")
rl_config.pipeline = "async"
rl_config.swimlanes.env_groups = 2
rl_config.rl.warmstart_steps = 0  # The warm start is its own run below (mode "sft").
rl_config.train.iterations = 4 if TINY else 30
rl_config.train.eval_every = 4 if TINY else 10
rl_config.train.checkpoint_every = rl_config.train.iterations

sft_config = rl_config.copy_and_resolve_references()
sft_config.mode = "sft"
sft_config.train.iterations = 30 if TINY else 800
sft_config.train.log_every = 5 if TINY else 20
sft_config.train.eval_every = sft_config.train.iterations
sft_config.train.checkpoint_every = sft_config.train.iterations
if TINY:
  sft_config.sft.episodes, sft_config.sft.holdout_episodes = 16, 4
  sft_config.sft.batch_size = 32
for c in (rl_config, sft_config):
  config_check.validate(c, known_tasks=envs.list_tasks())
SFT_DIR = os.path.join(WORKDIR, f"sft_{SIZE}")
RL_DIR = os.path.join(WORKDIR, f"rl_{SIZE}")
rl_config.rl.init_from = SFT_DIR
print(f"{SIZE}: model {rl_config.model.preset}, {rl_config.env.num_envs} envs in "
      f"{rl_config.swimlanes.env_groups} groups, {sft_config.train.iterations} cloning steps, "
      f"{rl_config.train.iterations} PPO iterations")
# Env groups, model graph and jitted steps, built once for both runs.
components = builders.build(rl_config)""", ()),
    ("markdown", """\
## 5. Supervised warm-start

Behaviour cloning, as `--config.mode=sft` does (`dvla_jax/training/sft.py`): the scripted
expert plays the task through the run's own env, and the policy learns its action tokens by
cross-entropy. Demonstrations after the first `sft.episodes` are held out.""", ()),
    ("code", """\
from dvla_jax.training import sft

sft_log = []
sft_result = sft.train(sft_config, SFT_DIR, progress_fn=lambda s, m: sft_log.append((s, m)),
                       components=components)
fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3))
train = [(s, m["sft/loss"]) for s, m in sft_log if "sft/loss" in m]
held = [(s, m["sft/holdout_loss"]) for s, m in sft_log if "sft/holdout_loss" in m]
ax_loss.plot(*zip(*train), label="training batches")
ax_loss.plot(*zip(*held), "o-", label="held-out demonstrations")
ax_loss.set(xlabel="cloning step", ylabel="token cross-entropy")
ax_loss.legend()
acc = [(s, m["sft/holdout_accuracy"]) for s, m in sft_log if "sft/holdout_accuracy" in m]
ax_acc.plot(*zip(*acc), "o-")
ax_acc.set(xlabel="cloning step", ylabel="held-out token accuracy")
plt.show()
print(f"after cloning: success {sft_result['eval/success_rate']:.2f} on "
      f"{sft_result['eval/episodes']} episodes")""", ()),
    ("markdown", """\
## 6. Asynchronous RL with a live plot

`trainer.train` reports through `progress_fn(iteration, metrics)`, called from the lanes.
The run goes on a background thread; this cell checks every second for new metrics and
redraws the figure when some have come in, until the run ends. The policy starts from the
cloned one (`rl.init_from`).""", ()),
    ("code", """\
import threading

from IPython import display

from dvla_jax.training import trainer

rl_log = []  # (iteration, metrics), appended by progress_fn
outcome = {}


def progress_fn(iteration, metrics):
  rl_log.append((iteration, dict(metrics)))


def _run():
  try:
    outcome["result"] = trainer.train(rl_config, RL_DIR, progress_fn=progress_fn,
                                      components=components)
  except BaseException as e:  # Re-raised on the notebook's thread below.
    outcome["error"] = e


def _series(key):
  return [(s, m[key]) for s, m in list(rl_log) if key in m]


def draw(fig, axes):
  panels = [("eval/success_rate", "eval success"), ("rollout/episode_return", "return"),
            ("learner/loss", "learner loss")]
  for ax, (key, label) in zip(axes, panels):
    ax.clear()
    points = _series(key)
    if points:
      ax.plot(*zip(*points), "o-")
    ax.set(xlabel="iteration", title=label)
  lanes = ["sampling", "inference", "gradient", "distribution"]
  busy = [(_series(f"lanes/{lane}_busy") or [(0, 0.0)])[-1][1] for lane in lanes]
  axes[3].clear()
  axes[3].barh(lanes, busy)
  axes[3].set(xlim=(0, 1), title="lane busy fraction (latest)")
  fig.tight_layout()


fig, axes = plt.subplots(1, 4, figsize=(15, 3))
plt.close(fig)  # Shown through the display handle only.
handle = display.display(fig, display_id=True)
thread = threading.Thread(target=_run)
thread.start()
drawn = 0
while thread.is_alive():
  thread.join(timeout=1.0)
  if len(rl_log) > drawn:  # Redraw only when there is something new.
    drawn = len(rl_log)
    draw(fig, axes)
    handle.update(fig)
draw(fig, axes)
handle.update(fig)
if "error" in outcome:
  raise outcome["error"]
result = outcome["result"]
print(f"iteration {result['step']}: eval success {result['eval/success_rate']:.2f} on "
      f"{result['eval/episodes']} episodes")""", ()),
    ("markdown", """\
## 7. The swimlane timeline

`tools/plot_timeline.py` draws the run's `trace.json`: one row per lane, one bar per span of
work, gaps are waits. Bars that overlap across rows are the pipeline overlapping simulation,
inference, learning and weight copies.""", ()),
    ("code", """\
from IPython.display import Image

timeline = os.path.join(RL_DIR, "timeline.png")
subprocess.run([sys.executable, "tools/plot_timeline.py",
                f"--trace={os.path.join(RL_DIR, 'trace.json')}", f"--out={timeline}"],
               check=True)
display.display(Image(filename=timeline))""", ()),
    ("markdown", """\
## 8. Restore the checkpoint and watch a rollout

`dvla_jax.evaluate` rebuilds the model from the checkpoint's metadata, restores the newest
`params` item, scores fresh episodes (success rate with a 95% Wilson interval) and writes
videos of a few of them, as `python -m dvla_jax.evaluate --workdir=...` does.""", ()),
    ("code", """\
from dvla_jax.evaluate import report
from dvla_jax.evaluate import workdir as eval_workdir

evaluation = eval_workdir.evaluate_workdir(
    RL_DIR, episodes=8 if TINY else 64, num_videos=1, video_size=0 if TINY else 128,
    video_format="gif")
report.print_table(evaluation)
video = evaluation["tasks"]["touch_cube"]["videos"][0]
print(f"episode of {video['steps']} steps, success: {video['success']}")
display.display(Image(filename=video["path"]))""", ()),
]


def build() -> nbformat.NotebookNode:
  """The notebook, without outputs."""
  nb = nbformat.v4.new_notebook()
  nb.metadata = {
      "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
      "language_info": {"name": "python"},
      "accelerator": "GPU",
      "colab": {"provenance": []},
  }
  for i, (kind, source, tags) in enumerate(_CELLS):
    make = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
    cell = make(source, id=f"cell-{i:02d}")
    if tags:
      cell.metadata["tags"] = list(tags)
    nb.cells.append(cell)
  nbformat.validate(nb)
  return nb


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default=NOTEBOOK, help="where to write the notebook")
  parser.add_argument("--check", action="store_true",
                      help="compare with --out instead of writing; exit 1 if they differ")
  args = parser.parse_args(argv)
  text = nbformat.writes(build()) + "\n"
  if args.check:
    try:
      with open(args.out, encoding="utf-8") as f:
        same = f.read() == text
    except FileNotFoundError:
      same = False
    if not same:
      print(f"{args.out} is not what tools/make_notebook.py writes; run it", file=sys.stderr)
      return 1
    return 0
  with open(args.out, "w", encoding="utf-8") as f:
    f.write(text)
  print(f"wrote {args.out} ({len(_CELLS)} cells)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
