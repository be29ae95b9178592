"""The memory planner: per-device terms from shapes and shardings, verdicts, and agreement with
`compiled.memory_analysis()` of an ahead-of-time compiled learner step."""

import json
import os
import subprocess
import sys
import time

import jax
import pytest

from dvla_jax import models
from dvla_jax import parallel
from dvla_jax.parallel import memory_plan

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_TOOL = os.path.join(_ROOT, "tools", "plan_memory.py")
GIB = memory_plan.GIB


def _run_tool(*args, timeout=300):
  # A subprocess: the tool configures fake CPU devices, which must happen before JAX starts.
  # Cheap code generation: buffer sizes do not depend on how hard the backend optimises.
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
                      " --xla_llvm_disable_expensive_passes=true").strip()
  return subprocess.run([sys.executable, _TOOL, *args], env=env, capture_output=True,
                        text=True, timeout=timeout, check=False)


def test_7b_on_1024_devices_terms():
  config = models.get_preset("7b")
  plan = parallel.plan_memory(config, parallel.parse_mesh("data=4,fsdp=32,tensor=8"))
  terms = plan.learner.terms
  assert plan.num_params == models.count_params(config)
  assert plan.batch == 4 * 32  # one sample per data-parallel rank by default
  # The big matrices split 32 x 8 ways; the few replicated vectors add about 1%.
  assert 1.0 <= terms["parameters"] / (plan.num_params * 4 / 256) < 1.05
  assert terms["optimizer state"] == 2 * terms["parameters"] + 4  # Adam moments + count
  assert terms["gradients"] == terms["parameters"]
  assert terms["activations"] > 0 and terms["fsdp gather"] > 0
  assert plan.actor.terms["incoming weights"] == plan.actor.terms["parameters"]
  assert plan.fits(80 * GIB)


def test_1t_on_16384_devices_plans_without_allocating():
  start = time.perf_counter()
  plan = parallel.plan_memory(models.get_preset("1t", dtype="bfloat16", remat=True),
                              parallel.parse_mesh("data=4,fsdp=256,tensor=16"), batch=4096)
  assert time.perf_counter() - start < 60
  assert abs(plan.num_params / 1e12 - 1) < 0.05
  per_device = plan.num_params * 4 / (256 * 16)
  assert 1.0 <= plan.learner.terms["parameters"] / per_device < 1.05
  assert plan.fits(80 * GIB)


def test_says_plainly_what_does_not_fit():
  plan = parallel.plan_memory(models.get_preset("7b"), {"data": 1})
  verdict = plan.learner.verdict(80 * GIB)
  assert "DOES NOT FIT" in verdict and "largest term: optimizer state" in verdict
  assert "over by" in verdict
  assert "optimizer state alone exceeds" in plan.learner.verdict(40 * GIB)
  assert "fits" in plan.actor.verdict(80 * GIB)  # 2 x 26 GiB of weights
  assert not plan.fits(80 * GIB) and plan.fits(200 * GIB)
  text = parallel.format_plan(plan, 80 * GIB)
  for term in ("parameters", "optimizer state", "gradients", "activations", "batch",
               "incoming weights"):
    assert term in text


def test_remat_and_bfloat16_shrink_activations():
  mesh = {"data": 8}
  base = parallel.plan_memory(models.get_preset("1b"), mesh, batch=64).learner.terms
  remat = parallel.plan_memory(models.get_preset("1b", remat=True), mesh, batch=64).learner.terms
  bf16 = parallel.plan_memory(models.get_preset("1b", dtype="bfloat16"), mesh,
                              batch=64).learner.terms
  # Remat keeps one tensor per trunk block (the ViT's 24 blocks are not rematerialised).
  assert remat["activations"] < 0.75 * base["activations"]
  assert 0.4 < bf16["activations"] / base["activations"] < 0.75
  assert bf16["parameters"] == base["parameters"]  # float32 master weights either way


def test_mesh_errors_are_one_line():
  with pytest.raises(parallel.MeshDivisionError, match="num_heads=32"):
    parallel.plan_memory(models.get_preset("7b"), {"tensor": 3})
  with pytest.raises(ValueError, match="allowed: comma-separated AXIS=SIZE"):
    parallel.parse_mesh("data=4,tensr=2")
  assert parallel.parse_mesh("fsdp=2") == {"data": 1, "fsdp": 2, "tensor": 1}


def test_check_command_and_strict():
  ok = _run_tool("--preset", "7b", "--mesh", "data=4,fsdp=32,tensor=8")
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert "learner step fits" in ok.stdout and "actor step fits" in ok.stdout
  assert "not compiled: the mesh has 1024 devices" in ok.stdout
  over = _run_tool("--preset", "7b", "--compile", "never", "--strict")
  assert over.returncode == 1 and "learner step DOES NOT FIT" in over.stdout
  bad = _run_tool("--preset", "7b", "--mesh", "tensor=3")
  assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "num_heads" in bad.stderr


def test_plan_agrees_with_compiled_memory_analysis(tmp_path):
  """Arguments of the compiled step are the params + optimizer state + batch it was given.

  Temporaries hold what the plan calls gradients + activations + gather buffers plus XLA's
  own fusion buffers, so they are only checked to be of the same size.
  """
  out = tmp_path / "plan.json"
  result = _run_tool("--preset", "small", "--mesh", "fsdp=2,tensor=2", "--batch", "16",
                     "--json", str(out))
  assert result.returncode == 0, result.stderr[-2000:]
  assert "compiled learner step on 4 cpu device(s)" in result.stdout
  report = json.loads(out.read_text())
  compiled = report["compiled"]
  assert abs(compiled["arguments_rel_diff"]) < 0.10
  assert 0.5 < compiled["temporaries_ratio"] < 3.0
  assert compiled["memory_analysis"]["alias_size_in_bytes"] > 0.9 * (
      report["learner"]["parameters"] + report["learner"]["optimizer state"])


def test_planner_imports_no_devices():
  # Planning a mesh far larger than the machine touches only abstract meshes.
  assert len(jax.devices()) < 1024
  parallel.plan_memory(models.get_preset("small"), {"data": 1024}, batch=1024)


def test_lora_rank_flag_plans_the_adapters_only():
  """`--lora_rank 16` on 7b: Adam state and the incoming weights of the adapters and heads."""
  def terms(*extra):
    result = _run_tool("--preset", "7b", "--mesh", "fsdp=8", "--compile", "never", *extra)
    assert result.returncode == 0, result.stderr[-2000:]
    found = {}
    for line in result.stdout.splitlines():
      parts = line.split()
      if len(parts) >= 4 and parts[-1] == "B" and parts[-3] == "GiB":
        found.setdefault(" ".join(parts[:-4]), int(parts[-2].replace(",", "")))
    return found

  full, lora = terms(), terms("--lora_rank", "16")
  assert lora["optimizer state"] < 0.02 * full["optimizer state"]
  assert lora["incoming weights"] < 0.02 * full["incoming weights"]
  assert lora["parameters"] > full["parameters"]  # The adapters are added, the base kept.
