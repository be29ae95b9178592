"""The command line: --helpfull, one-line errors with exit status 2, and the hand-off to train.

Every run goes through a subprocess, as a user would. A stub trainer (and a stub task
registry) replaces the real ones, so an error path that wrongly reached training would show
up as "TRAIN" in stdout, and the happy path takes well under a second.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_TINY = "--config=configs/demo.py:tiny"

_STUB_MAIN = """
import json, sys, types
trainer = types.ModuleType("dvla_jax.training.trainer")
def train(config, workdir):
  print("TRAIN " + json.dumps({"lr": config.rl.lr, "num_envs": config.env.num_envs,
                               "workdir": workdir}))
  return {"eval/success_rate": 1.0}
trainer.train = train
trainer.init_backends = lambda config: None
trainer.summary = lambda config: "SUMMARY " + config.env.task
sys.modules["dvla_jax.training.trainer"] = trainer
registry = types.ModuleType("dvla_jax.envs.registry")
registry.list_tasks = lambda: ["touch_cube"]
sys.modules["dvla_jax.envs.registry"] = registry
import dvla_jax.training
dvla_jax.training.trainer = trainer
from dvla_jax import main
main.run()
"""


def _run(args, stub=True):
  path = [str(_ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(path))
  command = [sys.executable] + (["-c", _STUB_MAIN] if stub else ["-m", "dvla_jax.main"])
  return subprocess.run(command + list(args), cwd=_ROOT, env=env, capture_output=True,
                        text=True, timeout=120, check=False)


def _assert_one_line_error(result, *fragments):
  assert result.returncode == 2, result.stderr
  assert "TRAIN" not in result.stdout
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith("config error: ")
  for fragment in fragments:
    assert fragment in lines[0]


def test_helpfull_lists_workdir_and_config():
  result = _run(["--helpfull"], stub=False)
  assert "--workdir" in result.stdout and "--config" in result.stdout


@pytest.mark.parametrize("args, fragments", [
    (["--config.no_such_field=3"],
     ["config.no_such_field: unknown field", "allowed: env, mode, model"]),
    (["--config.rl.no_such_field=3"], ["config.rl.no_such_field: unknown field", "lr"]),
    (["--config.env.num_envs=2.5"], ["config.env.num_envs='2.5'", "allowed: int >= 1"]),
    (["--config.rl.lr=abc"], ["config.rl.lr='abc'", "allowed: float > 0"]),
    (["--config.rl.lr=-1"], ["rl.lr=-1.0 out of range; allowed: float > 0"]),
    (["--config.env.domain_randomization=maybe"],
     ["config.env.domain_randomization='maybe' cannot be parsed", "allowed: bool"]),
    (["--config.rl=3"], ["config.rl is a group; allowed: one of its fields"]),
    (["--config.rl.lr.x=3"], ["config.rl.lr is a float field, not a group"]),
    (["--config.env.impl=cuda"], ["env.impl='cuda'", "allowed: 'warp', 'jax'"]),
    (["--config.rl.num_minibatches=3"], ["rl.num_minibatches=3 does not divide"]),
    (["--config.env.task=no_such_task"], ["env.task='no_such_task' unknown",
                                          "allowed: touch_cube"]),
])
def test_bad_config_values(tmp_path, args, fragments):
  _assert_one_line_error(_run([_TINY, f"--workdir={tmp_path}"] + args), *fragments)


def test_unknown_field_after_flagfile_in_real_module(tmp_path):
  result = _run(["--flagfile=configs/demo.flags", f"--workdir={tmp_path}",
                 "--config.no_such_field_xyz=3"], stub=False)
  _assert_one_line_error(result, "config.no_such_field_xyz: unknown field")


@pytest.mark.parametrize("args, fragments", [
    (["--config=no_such_config.py", "--workdir=WORKDIR"],
     ["--config=no_such_config.py", "no such file"]),
    (["--config=no_such_config.py", "--config.rl.lr=1", "--workdir=WORKDIR"],
     ["--config=no_such_config.py", "no such file"]),
    (["--config=configs/demo.py:huge", "--workdir=WORKDIR"],
     ["--config=configs/demo.py:huge", "allowed: '' or 'tiny'"]),
    ([_TINY], ["--workdir is required"]),
    (["--workdir=WORKDIR"], ["--config is required"]),
    ([_TINY, "--wokdir=WORKDIR"], ["wokdir"]),
    (["--flagfile=no_such.flags"], ["no_such.flags"]),
])
def test_bad_process_flags(tmp_path, args, fragments):
  args = [arg.replace("WORKDIR", str(tmp_path)) for arg in args]
  _assert_one_line_error(_run(args), *fragments)


def test_valid_flags_reach_the_trainer(tmp_path):
  workdir = tmp_path / "run"
  result = _run(["--flagfile=configs/demo.flags", "--config=configs/demo.py:tiny",
                 f"--workdir={workdir}", "--config.rl.lr=0.001"])
  assert result.returncode == 0, result.stderr
  line = [line for line in result.stdout.splitlines() if line.startswith("TRAIN ")]
  assert json.loads(line[0][len("TRAIN "):]) == {
      "lr": 0.001, "num_envs": 8, "workdir": str(workdir)}
  assert workdir.is_dir()
