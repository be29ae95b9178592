"""The config files for accelerators, checked without them: config check, placement, memory.

Each config is planned for the device count its docstring describes (`run_plan.plan_run`:
the checks a run makes at start-up, then the memory of every plane added up on the devices
it shares); the fullest device must stay within JAX's default GPU preallocation (75% of the
device), and the GiB figure the docstring and README's configs table quote must be the one
the planner gives. `configs/gpu8.py:runlocal` runs end to end on 8 fake CPU devices with the
same disaggregated placement.
"""

import importlib.util
import json
import math
import os
import pathlib
import re
import subprocess
import sys

import pytest

from dvla_jax.config import config_check
from dvla_jax.training import run_plan

_ROOT = pathlib.Path(__file__).resolve().parents[1]
GIB = run_plan.GIB
_PREALLOCATED = 0.75  # XLA_PYTHON_CLIENT_MEM_FRACTION's default on GPU.

# config file -> (devices of the run, GiB of memory per device, processes).
_ACCELERATOR_CONFIGS = {
    "configs/gpu1.py": (1, 80, 1),
    "configs/gpu8.py": (8, 80, 1),
    "configs/tpu_pod.py": (64, 32, 1),
    "configs/multihost.py": (32, 80, 4),
}
_CPU_CONFIGS = {"configs/demo.py"}  # Run by `make demo` and, tiny, by the trainer tests.


def _load(argument: str):
  path, *arg = argument.split(":", 1)
  spec = importlib.util.spec_from_file_location("_config_under_test", _ROOT / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module, module.get_config(*arg)


def _readme_row(path: str) -> str:
  rows = [line for line in (_ROOT / "README.md").read_text().splitlines()
          if line.startswith(f"| `{path}`")]
  assert len(rows) == 1, f"README's configs table needs one row for {path}"
  return rows[0]


def test_every_config_file_is_checked_here():
  files = {str(p.relative_to(_ROOT)) for p in (_ROOT / "configs").glob("*.py")}
  assert files == set(_ACCELERATOR_CONFIGS) | _CPU_CONFIGS


@pytest.mark.parametrize("path", sorted(_ACCELERATOR_CONFIGS))
def test_config_fits_its_devices(path):
  devices, gib, processes = _ACCELERATOR_CONFIGS[path]
  module, config = _load(path)
  plan = run_plan.plan_run(config, devices, processes)

  placement = config.placement
  sizes = {"sim": placement.sim.devices}
  for plane in ("actor", "learner"):
    sizes[plane] = math.prod(placement[plane][axis] for axis in ("data", "fsdp", "tensor"))
  if placement.mode == "disaggregated":  # The planes use every device, each once.
    assert sorted(i for ids in plan.device_ids.values() for i in ids) == list(
        range(devices // processes))  # Each process's devices.
  assert {p: len(ids) for p, ids in plan.device_ids.items()} == sizes

  device, peak = plan.peak()
  assert peak <= _PREALLOCATED * gib * GIB, plan.format(int(gib * GIB))
  # Every plane's work is counted on its devices: the model state at least.
  params = plan.steps.learner.terms["parameters"]
  assert plan.per_device[plan.device_ids["learner"][0]]["learner parameters"] == params
  assert peak >= params

  # The figure quoted in the docstring and in README is the planner's.
  quoted = f"{peak / GIB:.1f} GiB"
  assert quoted in " ".join(module.__doc__.split()), (path, quoted)
  row = _readme_row(path)
  assert quoted in row and f"{devices} " in row, (row, quoted)


@pytest.mark.parametrize("path", sorted(_ACCELERATOR_CONFIGS))
def test_config_needs_all_its_devices(path):
  devices, _, processes = _ACCELERATOR_CONFIGS[path]
  _, config = _load(path)
  with pytest.raises(config_check.ConfigError, match="placement"):
    run_plan.plan_run(config, devices - processes, processes)


def test_multiprocess_plan_needs_equal_devices_per_process():
  _, config = _load("configs/multihost.py")
  with pytest.raises(config_check.ConfigError, match="30 devices over 4 processes"):
    run_plan.plan_run(config, 30, 4)
  one = run_plan.plan_run(config, 32, 4)
  # Per process: the learner's fsdp 4 joined over 4 processes shards the state 16 ways, and
  # the gathered weight snapshot is a whole replica on each learner device.
  terms = one.per_device[one.device_ids["learner"][0]]
  assert terms["learner weight snapshot"] > 15 * terms["learner parameters"]


def test_plan_tool_reads_a_config(tmp_path):
  out = tmp_path / "plan.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, "tools/plan_memory.py", "--config=configs/gpu8.py", "--devices=8",
       "--device_memory_gib=80", f"--json={out}"],
      cwd=_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  report = json.loads(out.read_text())
  assert report["fits"] and report["device_ids"]["learner"] == [4, 5, 6, 7]
  assert re.search(r"^fits: [\d.]+ GiB of 80.00 GiB", result.stdout, re.M), result.stdout
  small = subprocess.run(
      [sys.executable, "tools/plan_memory.py", "--config=configs/gpu8.py", "--devices=8",
       "--device_memory_gib=4", "--strict"],
      cwd=_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert small.returncode == 1 and "DOES NOT FIT" in small.stdout, small.stdout


def test_gpu8_placement_runs_on_8_fake_devices(tmp_path):
  workdir = tmp_path / "run"
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(_ROOT),
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  result = subprocess.run(
      [sys.executable, "-m", "dvla_jax.main", "--config=configs/gpu8.py:runlocal",
       f"--workdir={workdir}"],
      cwd=_ROOT, env=env, capture_output=True, text=True, timeout=420, check=False)
  assert result.returncode == 0, result.stderr[-4000:]
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert max(r["step"] for r in records) == 2
  assert any("eval/success_rate" in r for r in records if r["step"] == 2)
  trace = json.loads((workdir / "trace.json").read_text())
  names = {e["tid"]: e["args"]["name"] for e in trace["traceEvents"]
           if e.get("name") == "thread_name"}
  busy = {names.get(e["tid"]) for e in trace["traceEvents"] if e.get("ph") == "X"}
  assert {"sampling", "inference", "gradient", "distribution"} <= busy
