"""What a user sees: a tiny run on a task of their own, a Playground task from config, the
console, the saved config, evaluation from another directory, and one-line errors.

Every run is a subprocess of `python -m dvla_jax.main` (or `dvla_jax.evaluate`), as a user
would start it.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_TINY = "--config=configs/demo.py:tiny"
_EXAMPLE = "--config.env.import_tasks=examples/custom_task.py"
# What must never reach a CPU user's console.
_NOISE = ("libtpu", "Unable to initialize backend", "CUDA driver", "Traceback")

pytestmark = pytest.mark.slow


def _run(args, module="dvla_jax.main", cwd=_ROOT, timeout=600, env_changes=None):
  path = [str(_ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
  # No JAX_PLATFORMS: the run must stay quiet about the backends it probes by itself.
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  env.update(PYTHONPATH=os.pathsep.join(path), **(env_changes or {}))
  return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=timeout, check=False)


def _assert_quiet(result):
  for noise in _NOISE:
    assert noise not in result.stdout + result.stderr, result.stdout + result.stderr


def _assert_one_line_error(result, *fragments):
  assert result.returncode == 2, result.stdout + result.stderr
  _assert_quiet(result)
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  for fragment in fragments:
    assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def custom_run(tmp_path_factory):
  """A tiny run on the example's task: a short warm start on its expert, then 2 PPO updates."""
  workdir = tmp_path_factory.mktemp("custom") / "run"
  result = _run([_TINY, f"--workdir={workdir}", _EXAMPLE, "--config.env.task=hover_over_ball",
                 "--config.rl.warmstart_steps=8", "--config.sft.episodes=16"])
  assert result.returncode == 0, result.stdout + result.stderr
  return workdir, result


def test_custom_task_trains_with_a_quiet_informative_console(custom_run):
  workdir, result = custom_run
  _assert_quiet(result)
  lines = result.stdout.splitlines()
  assert lines[0].startswith("dvla_jax rl ppo | task hover_over_ball | model tiny")
  for part in ("pipeline sync", "placement colocated", "devices 1 cpu", "config.json"):
    assert part in lines[0]
  text = result.stdout
  assert "warm start: behaviour cloning on" in text and "done, 8/8 steps in" in text
  assert "compiling the rollout and learner steps" in text
  assert "evaluation at iteration 0" in text and "(the first one compiles)" in text
  assert "iteration 2/2" in text
  # Phases, progress and results only: no config dump, no library logging.
  assert len(lines) < 30, text
  assert result.stderr.strip() == "", result.stderr
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["env"]["task"] == "hover_over_ball"
  # Saved absolute, so that evaluation finds the module from any directory.
  assert saved["env"]["import_tasks"] == str(_ROOT / "examples" / "custom_task.py")


def test_custom_task_evaluates_from_another_directory(custom_run, tmp_path):
  workdir, _ = custom_run
  result = _run([f"--workdir={workdir}", "--episodes=4", "--videos=0",
                 f"--out={tmp_path / 'eval.json'}"], module="dvla_jax.evaluate", cwd=tmp_path)
  assert result.returncode == 0, result.stdout + result.stderr
  _assert_quiet(result)
  scores = json.loads((tmp_path / "eval.json").read_text())
  assert list(scores["tasks"]) == ["hover_over_ball"]
  assert scores["tasks"]["hover_over_ball"]["episodes"] == 4


def test_verbosity_brings_back_library_logs(custom_run, tmp_path):
  workdir, _ = custom_run
  # A finished run resumes at its end: set-up, a final evaluation, nothing else.
  result = _run([_TINY, f"--workdir={workdir}", _EXAMPLE, "--config.env.task=hover_over_ball",
                 "--verbosity=0"])
  assert result.returncode == 0, result.stderr
  assert "resumed from" in result.stderr


def test_checkpoint_of_another_preset_is_refused_and_kept(custom_run):
  workdir, _ = custom_run
  before = (workdir / "config.json").read_bytes()
  steps = sorted(p.name for p in (workdir / "checkpoints").iterdir())
  result = _run([_TINY, f"--workdir={workdir}", _EXAMPLE, "--config.env.task=hover_over_ball",
                 "--config.model.preset=small"])
  _assert_one_line_error(result, "model.preset='tiny'", "model.preset='small'",
                         "nothing was overwritten")
  assert (workdir / "config.json").read_bytes() == before
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == steps


@pytest.mark.parametrize("pipeline", ["sync", "async"])
def test_playground_task_trains_from_config(tmp_path, pipeline):
  extra = ["--config.pipeline=async", "--config.swimlanes.env_groups=2"] * (pipeline == "async")
  result = _run([_TINY, f"--workdir={tmp_path}", "--config.env.task=playground:CartpoleBalance",
                 "--config.train.iterations=2", *extra])
  assert result.returncode == 0, result.stdout + result.stderr
  _assert_quiet(result)
  assert "task playground:CartpoleBalance" in result.stdout
  assert f"pipeline {pipeline}" in result.stdout
  # 8 evaluation episodes on one env group's worlds: 8 (sync) or 4 (two groups) at a time.
  rounds = 2 if pipeline == "async" else 1
  assert f"done, {rounds}/{rounds} rounds in" in result.stdout, result.stdout
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  returns = [r["eval/episode_return"] for r in rows if "eval/episode_return" in r]
  # Cartpole's reward is dense (up to 1 per env step): a real episode earns some.
  assert len(returns) == 2 and all(r > 0 for r in returns)
  assert any("learner/policy_loss" in r for r in rows)


@pytest.mark.parametrize("module, override, fragments", [
    ("mujoco_playground", "--config.env.task=playground:CartpoleBalance",
     ["needs the playground package", "pip install playground"]),
    ("wandb", "--config.train.wandb_project=my_project",
     ["train.wandb_project='my_project'", "pip install wandb"]),
])
def test_a_missing_optional_package_says_what_to_install(tmp_path, module, override,
                                                         fragments):
  # Imports of `module` fail in the run, as if it were not installed.
  script = f"import sys; sys.modules[{module!r}] = None\nfrom dvla_jax import main; main.run()"
  path = os.pathsep.join([str(_ROOT)] + [os.environ.get("PYTHONPATH", "")])
  result = subprocess.run(
      [sys.executable, "-c", script, _TINY, f"--workdir={tmp_path}", override], cwd=_ROOT,
      capture_output=True, text=True, timeout=300, check=False,
      env=dict(os.environ, PYTHONPATH=path))
  _assert_one_line_error(result, *fragments)


@pytest.mark.parametrize("files, args, fragments", [
    ({"syntax.flags": "--config=configs/demo.py:tiny\n--config.this is not a flag\n"},
     ["--flagfile=TMP/syntax.flags"], ["malformed override '--config.this is not a flag'"]),
    ({"raises.py": "raise RuntimeError('boom')\n"}, ["--config=TMP/raises.py"],
     ["the config file raised RuntimeError: boom"]),
    ({"empty.py": "X = 1\n"}, ["--config=TMP/empty.py"], ["defines no get_config()"]),
    ({}, ["--config=configs/demo.py:huge"], ["unknown arg 'huge'"]),
    ({}, [_TINY, "--config.env.import_tasks=TMP/missing.py"], ["no such file", "missing.py"]),
    ({"bad_tasks.py": "raise ImportError('no torch here')\n"},
     [_TINY, "--config.env.import_tasks=TMP/bad_tasks.py"],
     ["bad_tasks.py raised ImportError: no torch here"]),
    ({}, [_TINY, "--config.env.task=playground:NoSuchTask"],
     ["unknown Playground task 'NoSuchTask'"]),
    ({}, [_TINY, "--config.env.task=hover_over_ball"], ["env.task='hover_over_ball' unknown"]),
])
def test_bad_input_is_one_line(tmp_path, files, args, fragments):
  for name, text in files.items():
    (tmp_path / name).write_text(text)
  args = [arg.replace("TMP", str(tmp_path)) for arg in args]
  result = _run(args + [f"--workdir={tmp_path / 'run'}"], timeout=300)
  _assert_one_line_error(result, *fragments)
  assert not (tmp_path / "run" / "config.json").exists()
