"""`pip install -e .` into a fresh virtual environment gives the package and its console
scripts, which work from any directory.

A full install would download every dependency again, so the fresh environment sees the
test environment's installed packages through a `.pth` file and installs the project alone
(`--no-deps`); pip builds it in isolation as it would for any user.
"""

import os
import pathlib
import subprocess
import sys
import sysconfig

import pytest

_ROOT = pathlib.Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_editable_install_gives_console_scripts(tmp_path):
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
  python = venv / "bin" / "python"
  purelib = subprocess.run(
      [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
      check=True, capture_output=True, text=True).stdout.strip()
  (pathlib.Path(purelib) / "parent.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "JAX_PLATFORMS")}
  install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "-e",
                            str(_ROOT)], env=env, capture_output=True, text=True, timeout=600,
                           check=False)
  assert install.returncode == 0, install.stdout + install.stderr
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  where = subprocess.run([str(python), "-c", "import dvla_jax, os; "
                          "print(os.path.dirname(dvla_jax.__file__))"], cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=300, check=True)
  assert pathlib.Path(where.stdout.strip()) == _ROOT / "dvla_jax"
  for script, flag in (("dvla-train", "--workdir"), ("dvla-eval", "--episodes")):
    result = subprocess.run([str(venv / "bin" / script), "--helpfull"], cwd=elsewhere, env=env,
                            capture_output=True, text=True, timeout=300, check=False)
    assert flag in result.stdout, result.stdout + result.stderr
  # A bad flag from the installed script: still one line, exit status 2.
  result = subprocess.run([str(venv / "bin" / "dvla-train"), "--workdir=x",
                           "--config=no_such.py"], cwd=elsewhere, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
  assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
