"""The Colab notebook: generated from tools/make_notebook.py, and runs headless on `tiny`.

The whole notebook is executed with nbclient in a fresh kernel, its parameters cell replaced
by `SIZE = "tiny"` and a temporary workdir; every cell must finish without an error within
the per-cell limit, and the cells that show something must have shown it (frames, plots,
the timeline, the rollout video).
"""

import base64
import os
import pathlib
import subprocess
import sys
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_NOTEBOOK = _ROOT / "experiments" / "colab_demo.ipynb"
_CELL_TIMEOUT_S = 300


def test_notebook_is_generated_and_has_no_outputs():
  result = subprocess.run([sys.executable, "tools/make_notebook.py", "--check"], cwd=_ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
  assert result.returncode == 0, result.stderr
  nb = nbformat.read(_NOTEBOOK, as_version=4)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(not c.outputs and c.execution_count is None for c in code)
  assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1


def _outputs(cell, mime):
  return [o for o in cell.outputs if mime in o.get("data", {})]


def _cell(nb, fragment):
  found = [c for c in nb.cells if c.cell_type == "code" and fragment in c.source]
  assert len(found) == 1, fragment
  return found[0]


def test_notebook_runs_tiny_headless(tmp_path):
  nb = nbformat.read(_NOTEBOOK, as_version=4)
  for cell in nb.cells:
    if "parameters" in cell.metadata.get("tags", []):
      cell.source = f'SIZE = "tiny"\nWORKDIR = {str(tmp_path / "runs")!r}'
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
      filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")])))
  # Cheap code generation: the tiny run is compile-bound on CPU (about half the time).
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
                      " --xla_llvm_disable_expensive_passes=true").strip()
  start = time.perf_counter()
  client = nbclient.NotebookClient(nb, timeout=_CELL_TIMEOUT_S, kernel_name="python3",
                                   resources={"metadata": {"path": str(_ROOT)}})
  try:
    client.execute(env=env)
  finally:
    nbformat.write(nb, str(tmp_path / "executed.ipynb"))  # To look at when a check fails.
  print(f"notebook ran in {time.perf_counter() - start:.0f}s")

  def text(cell):
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")

  assert "dvla_jax is importable; nothing to install" in text(_cell(nb, "REPO_URL ="))
  assert _outputs(_cell(nb, 'print("tasks:"'), "image/png")
  assert _outputs(_cell(nb, "sft.train("), "image/png")
  assert "after cloning: success" in text(_cell(nb, "sft.train("))
  rl = _cell(nb, "trainer.train(")
  assert _outputs(rl, "image/png")  # The live figure (a display with an id, updated).
  assert "iteration 4: eval success" in text(rl)
  assert _outputs(_cell(nb, "plot_timeline.py"), "image/png")
  video = _outputs(_cell(nb, "evaluate_workdir("), "image/gif")
  assert video and base64.b64decode(video[0]["data"]["image/gif"])[:6] in (b"GIF87a", b"GIF89a")
  assert (tmp_path / "runs" / "rl_tiny" / "trace.json").is_file()
