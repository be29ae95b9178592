"""Every command in README.md is run by a test or by CI.

README's commands are the lines of its ```sh blocks and the inline `code` that starts like a
command (make, python, a script under tools/ or experiments/, a --config.* override).
`COVERED` says where each one runs; `test_every_readme_command_is_covered` fails when README
gains a command that is not listed (or the list names one README lost). Commands that write
to a workdir run here with the workdir moved under pytest's tmp_path.

Benchmarks (`experiments/bench_*.py`): a full run takes minutes, so README's mentions of them
are covered by their `--help`; bench_broadcast also runs with its smallest flags (seconds).
"""

import ast
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

from matplotlib import image as plt_image
import numpy as np
import pytest

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_README = _ROOT / "README.md"
_TINY_COMMAND = ("python -m dvla_jax.main --config=configs/demo.py:tiny --workdir=/tmp/tiny "
                 "--config.rl.lr=1e-4")
_EVAL_COMMAND = "python -m dvla_jax.evaluate --workdir=/tmp/tiny --episodes=8 --videos=1"
_HELP = "test_scripts_answer_help"

# README command -> where it runs: "test_name" (this file), "file.py::test_name", or
# "CI: ..." / "external: ..." with the reason.
COVERED = {
    "make demo": "test_make_demo_runs_the_demo_flags",
    "python -m dvla_jax.config":
        "config/test_config_check.py::test_config_cli_prints_the_reference",
    "--config.model.lora_rank=16":
        "swimlanes/test_weight_delta.py::test_training_leaves_the_frozen_trunk_unchanged",
    "--config.model.trainable":
        "models/test_lora.py::test_trainable_groups_parse_with_one_line_errors",
    "tools/plan_memory.py --preset P --mesh fsdp=8 [--lora_rank 16]":
        "tools/test_plan_memory.py::test_lora_rank_flag_plans_the_adapters_only",
    "make test": "CI: .ci/run ends with `make test`",
    ".ci/run": "CI: the CI entry point itself",
    "make demo WORKDIR=/tmp/run": "test_make_demo_runs_the_demo_flags",
    "make demo JAX=cuda": "test_make_demo_runs_the_demo_flags",
    "python -m dvla_jax.main --flagfile=configs/demo.flags": "test_demo_flags_reach_the_trainer",
    _TINY_COMMAND: "test_tiny_run_writes_its_workdir",
    _EVAL_COMMAND: "test_evaluate_the_tiny_run",
    "tensorboard --logdir runs/demo/tb":
        "external: TensorBoard is not a dependency; test_tiny_run_writes_its_workdir checks the "
        "event file under tb/",
    "--config.mode=sft": "test_overrides_reach_the_trainer",
    "--config.rl.init_from=runs/sft": "test_overrides_reach_the_trainer",
    "--config.pipeline=async --config.swimlanes.env_groups=2": "test_overrides_reach_the_trainer",
    "python tools/make_notebook.py": "test_make_notebook_writes_the_committed_notebook",
    "python tools/plan_memory.py --config=configs/gpu8.py --devices=8 --device_memory_gib=80":
        "test_configs.py::test_plan_tool_reads_a_config",
    "tools/plan_memory.py --preset 7b --mesh data=4,fsdp=32,tensor=8":
        "test_plan_memory_7b_command",
    "tools/plot_timeline.py --trace=WORKDIR/trace.json --out=timeline.png":
        "test_plot_timeline_on_the_tiny_run",
    "tools/plan_memory.py": _HELP,
    "experiments/launch_xm.py": "test_launch_xm.py::test_sweep_is_the_cross_product_of_config_"
                                "overrides",
    "experiments/bench_broadcast.py": "test_bench_broadcast_smallest_run",
    "tools/make_notebook.py": "test_make_notebook_writes_the_committed_notebook",
    "python -m dvla_jax.envs --list":
        "envs/test_cli.py::test_list_prints_every_task_with_its_suite",
    # The full table takes minutes; the test rates one task with fewer episodes, same code path.
    "python -m dvla_jax.envs --experts --episodes 16":
        "envs/test_cli.py::test_experts_rates_a_task_outside_the_suite",
    "python -m dvla_jax.main --config=configs/demo.py:tiny --workdir=/tmp/hover "
    "--config.env.import_tasks=examples/custom_task.py --config.env.task=hover_over_ball":
        "test_user_runs.py::test_custom_task_trains_with_a_quiet_informative_console",
    "python -m dvla_jax.main": "test_tiny_run_writes_its_workdir",
    "python -m dvla_jax.evaluate": "test_evaluate_the_tiny_run",
    "--config.train.wandb_project=NAME": "training/test_metrics.py::test_wandb_writer_logs_offline",
    "--config.env.import_tasks=FILE.py":
        "test_user_runs.py::test_custom_task_trains_with_a_quiet_informative_console",
    "python -m dvla_jax.envs --import_tasks=FILE.py --list":
        "envs/test_cli.py::test_list_with_import_tasks_adds_the_user_task",
    "--config.env.task=playground:CartpoleBalance":
        "test_user_runs.py::test_playground_task_trains_from_config",
    "python tools/draw_architecture.py --out=docs/architecture.png":
        "test_draw_architecture_redraws_the_committed_picture",
}

_COMMAND_START = re.compile(
    r"^(make |python |\.ci/|tensorboard |--config\.|(tools|experiments)/\w+\.py\b)")
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def readme_commands(text: str) -> list[str]:
  """The commands of a README text, whitespace-normalised, in order."""
  commands = []
  for lang, body in _FENCE.findall(text):
    if lang not in ("sh", "bash"):
      continue
    for line in body.replace("\\\n", " ").splitlines():
      line = re.sub(r"\s+#.*$", "", line).strip()
      if line:
        commands.append(" ".join(line.split()))
  prose = _FENCE.sub("", text)
  for span in re.findall(r"`([^`]+)`", prose):
    span = " ".join(span.split())
    if _COMMAND_START.match(span):
      commands.append(span)
  return commands


def _bench_script(command: str):
  match = re.search(r"(experiments/bench_\w+\.py)", command)
  return match.group(1) if match else None


def _coverage(command: str) -> str:
  if command in COVERED:
    return COVERED[command]
  if _bench_script(command):
    return _HELP
  return ""


def test_readme_parser_finds_blocks_spans_and_continuations():
  text = ("```sh\nmake demo   # note\npython a.py \\\n  --x=1\n```\n```\nnot a command\n```\n"
          "See `make test` and `tools/x.py --flag\nvalue` but not `touch_cube`.\n")
  assert readme_commands(text) == ["make demo", "python a.py --x=1", "make test",
                                   "tools/x.py --flag value"]


def test_every_readme_command_is_covered():
  text = _README.read_text()
  found = readme_commands(text)
  assert _TINY_COMMAND in found and "make demo" in found  # The parser reads this README.
  missing = [c for c in found if not _coverage(c)]
  assert not missing, f"README commands with no test: {missing}; add them to COVERED"
  stale = sorted(set(COVERED) - set(found))
  assert not stale, f"COVERED lists commands README no longer has: {stale}"
  # Commands outside ```sh blocks would escape the check.
  for lang, body in _FENCE.findall(text):
    if lang not in ("sh", "bash"):
      assert not any(_COMMAND_START.match(line.strip()) for line in body.splitlines()), body


def _test_names(path: pathlib.Path) -> set[str]:
  tree = ast.parse(path.read_text())
  return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


def test_covered_names_real_tests():
  for command, where in COVERED.items():
    if where.startswith(("CI:", "external:")):
      continue
    file, _, name = where.rpartition("::")
    path = _ROOT / "tests" / file if file else pathlib.Path(__file__)
    assert name in _test_names(path), (command, where)


# -- The commands ---------------------------------------------------------------------------


def _env(**extra) -> dict:
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
      filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")])), **extra)


def _run(argv, timeout=300, **kwargs):
  return subprocess.run(argv, cwd=_ROOT, env=_env(), capture_output=True, text=True,
                        timeout=timeout, check=False, **kwargs)


def _python(command: str, *replace: tuple[str, str]) -> list[str]:
  """README's `python ...` command as argv for this interpreter, with workdirs replaced."""
  for old, new in replace:
    command = command.replace(old, new)
  argv = shlex.split(command)
  assert argv[0] == "python"
  return [sys.executable] + argv[1:]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """README's tiny command, run for real with its workdir under tmp_path."""
  workdir = tmp_path_factory.mktemp("readme") / "tiny"
  result = _run(_python(_TINY_COMMAND, ("/tmp/tiny", str(workdir))), timeout=420)
  return workdir, result


@pytest.mark.slow
def test_tiny_run_writes_its_workdir(tiny_run):
  workdir, result = tiny_run
  assert result.returncode == 0, result.stderr[-4000:]
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert max(r["step"] for r in records) == 2 and any("eval/success_rate" in r for r in records)
  assert any(p.name.isdigit() for p in (workdir / "checkpoints").iterdir())
  assert list((workdir / "tb").glob("**/events.out.tfevents.*"))
  # The override reached the run's resolved config.
  assert json.loads((workdir / "config.json").read_text())["rl"]["lr"] == 1e-4


@pytest.mark.slow
def test_evaluate_the_tiny_run(tiny_run):
  workdir, _ = tiny_run
  result = _run(_python(_EVAL_COMMAND, ("/tmp/tiny", str(workdir))))
  assert result.returncode == 0, result.stderr[-4000:]
  assert "touch_cube" in result.stdout and "95% CI" in result.stdout
  report = json.loads((workdir / "eval" / "results.json").read_text())
  row = report["tasks"]["touch_cube"]
  assert row["episodes"] == 8 and row["ci95"][0] <= row["success_rate"] <= row["ci95"][1]
  assert len(row["videos"]) == 1 and os.path.isfile(row["videos"][0]["path"])


@pytest.mark.slow
def test_plot_timeline_on_the_tiny_run(tiny_run):
  workdir, _ = tiny_run
  out = workdir / "timeline.png"
  command = "python " + "tools/plot_timeline.py --trace=WORKDIR/trace.json --out=timeline.png"
  result = _run(_python(command, ("WORKDIR", str(workdir)), ("=timeline.png", f"={out}")))
  assert result.returncode == 0, result.stderr
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


_STUB = """
import json, sys, types
import dvla_jax.training
def stub(name):
  def train(config, workdir, **kwargs):
    print("TRAIN " + json.dumps({"fn": name, "workdir": workdir, **config.to_dict()},
                                default=str))
    return {}
  module = types.ModuleType("dvla_jax.training." + name)
  module.train = train
  module.init_backends = lambda config: None
  module.summary = lambda config: "SUMMARY"
  sys.modules["dvla_jax.training." + name] = module
  setattr(dvla_jax.training, name, module)
stub("trainer"); stub("sft")
registry = types.ModuleType("dvla_jax.envs.registry")  # Saves importing MuJoCo and Warp.
registry.list_tasks = lambda: ["touch_cube"]
sys.modules["dvla_jax.envs.registry"] = registry
from dvla_jax import main
main.run()
"""


def _stub_main(*args) -> dict:
  """Runs `python -m dvla_jax.main ARGS` with trainer and sft replaced by recorders (and a
  task registry that only knows touch_cube)."""
  result = _run([sys.executable, "-c", _STUB, *args], timeout=120)
  assert result.returncode == 0, result.stderr[-4000:]
  (line,) = [ln for ln in result.stdout.splitlines() if ln.startswith("TRAIN ")]
  return json.loads(line[len("TRAIN "):])


def test_demo_flags_reach_the_trainer(tmp_path):
  seen = _stub_main("--flagfile=configs/demo.flags", f"--workdir={tmp_path}")
  assert seen["fn"] == "trainer" and seen["workdir"] == str(tmp_path)
  assert (seen["model"]["preset"], seen["env"]["num_envs"]) == ("small", 128)
  assert seen["rl"]["warmstart_steps"] == 2000 and seen["train"]["iterations"] == 60
  flags_file = (_ROOT / "configs" / "demo.flags").read_text().split()
  assert "--workdir=runs/demo" in flags_file  # What `make demo` uses when WORKDIR is unset.


@pytest.mark.parametrize("override, fn, check", [
    ("--config.mode=sft", "sft", lambda c: c["mode"] == "sft"),
    ("--config.rl.init_from=runs/sft", "trainer", lambda c: c["rl"]["init_from"] == "runs/sft"),
    ("--config.pipeline=async --config.swimlanes.env_groups=2", "trainer",
     lambda c: (c["pipeline"], c["swimlanes"]["env_groups"]) == ("async", 2)),
])
def test_overrides_reach_the_trainer(tmp_path, override, fn, check):
  seen = _stub_main("--flagfile=configs/demo.flags", f"--workdir={tmp_path}", *override.split())
  assert seen["fn"] == fn and check(seen), seen


def test_make_demo_runs_the_demo_flags(tmp_path):
  def dry_run(*args):
    result = _run(["make", "-n", "demo", *args], timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout

  assert "-m dvla_jax.main --flagfile=configs/demo.flags" in dry_run()
  assert f"--workdir={tmp_path}" in dry_run(f"WORKDIR={tmp_path}")
  cuda = dry_run("JAX=cuda")
  assert "-r requirements.d/cuda.txt" in cuda and "pip install" in cuda
  pins = (_ROOT / "requirements.d" / "cuda.txt").read_text().splitlines()
  assert "jax[cuda12]==0.10.2" in pins


def test_make_notebook_writes_the_committed_notebook(tmp_path):
  out = tmp_path / "colab_demo.ipynb"
  result = _run(_python("python tools/make_notebook.py") + [f"--out={out}"], timeout=60)
  assert result.returncode == 0, result.stderr
  committed = _ROOT / "experiments" / "colab_demo.ipynb"
  assert out.read_text() == committed.read_text()


def test_draw_architecture_redraws_the_committed_picture(tmp_path):
  out = tmp_path / "architecture.png"
  result = _run(_python("python tools/draw_architecture.py --out=docs/architecture.png",
                        ("docs/architecture.png", str(out))), timeout=120)
  assert result.returncode == 0, result.stderr
  drawn, committed = (plt_image.imread(str(p)) for p in (out, _ROOT / "docs" / "architecture.png"))
  assert drawn.shape == committed.shape
  # The same picture (text rendering may differ by a few anti-aliased pixels elsewhere).
  assert float(np.abs(drawn - committed).mean()) < 0.01
  assert "](docs/architecture.png)" in _README.read_text()


def test_plan_memory_7b_command():
  command = "python " + "tools/plan_memory.py --preset 7b --mesh data=4,fsdp=32,tensor=8"
  result = _run(_python(command))
  assert result.returncode == 0, result.stderr
  assert "learner step fits" in result.stdout and "actor step fits" in result.stdout
  assert "not compiled: the mesh has 1024 devices" in result.stdout


def test_bench_broadcast_smallest_run(tmp_path):
  out = tmp_path / "bcast.json"
  result = _run([sys.executable, "experiments/bench_broadcast.py", "--sizes_mb=1",
                 "--repeats=1", f"--out={out}"], timeout=120)
  assert result.returncode == 0, result.stderr[-4000:]
  (size,) = json.loads(out.read_text())["single_process"]["sizes"]
  assert size["equal_to_device_put"]


def _scripts_to_help() -> list[str]:
  scripts = {str(p.relative_to(_ROOT)) for p in (_ROOT / "experiments").glob("bench_*.py")}
  scripts |= {c for c, where in COVERED.items() if where == _HELP}
  return sorted(scripts)


@pytest.mark.parametrize("script", _scripts_to_help())
def test_scripts_answer_help(script):
  result = _run([sys.executable, script, "--help"], timeout=120)
  # absl scripts exit 1 after printing their help, argparse ones 0.
  assert result.returncode in (0, 1), result.stderr[-4000:]
  assert "--out" in result.stdout or "--preset" in result.stdout, result.stdout
