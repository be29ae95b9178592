"""Tests of experiments/launch_xm.py: the job specs always, a real local launch with XM_PYTHON.

The dry run is plain Python (no xmanager). The real launch needs the launcher's own
environment (`pip install -r requirements-xm.txt`, which conflicts with the project's pins):
set XM_PYTHON to its interpreter to run it; the test is skipped otherwise.
"""

import json
import os
import subprocess
import sys

import pytest

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_LAUNCHER = os.path.join(_REPO, "experiments", "launch_xm.py")


def _launch(python, *args, timeout=60):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([python, _LAUNCHER, *args], cwd=_REPO, env=env, capture_output=True,
                        text=True, timeout=timeout)


def _dry_run(*args):
  proc = _launch(sys.executable, "--dry_run", *args)
  assert proc.returncode == 0, proc.stderr
  return json.loads(proc.stdout)


def test_sweep_is_the_cross_product_of_config_overrides(tmp_path):
  jobs = _dry_run("--config=configs/demo.py:tiny", "--sweep=rl.lr=1e-3,3e-4",
                  "--sweep=config.rl.ent_coef=0,0.01", "--set=train.iterations=1",
                  f"--workdir_root={tmp_path}", f"--python={sys.executable}")
  assert len(jobs) == 4
  points = {(a[-2], a[-1]) for a in (job["args"] for job in jobs)}
  assert points == {(f"--config.rl.lr={lr}", f"--config.rl.ent_coef={ent}")
                    for lr in ("1e-3", "3e-4") for ent in ("0", "0.01")}
  workdirs = {job["workdir"] for job in jobs}
  assert len(workdirs) == 4 and all(w.startswith(str(tmp_path)) for w in workdirs)
  for job in jobs:
    args = job["args"]
    assert job["executable"] == sys.executable
    assert args[:2] == ["-m", "dvla_jax.main"]
    assert args[2] == f"--flagfile={os.path.join(_REPO, 'configs', 'demo.flags')}"
    assert args[3] == f"--config={os.path.join(_REPO, 'configs', 'demo.py')}:tiny"
    # The job's own workdir comes after the flags file, so it wins over the file's.
    assert args[4] == f"--workdir={job['workdir']}"
    assert "--config.train.iterations=1" in args
    assert job["env"]["PYTHONPATH"] == _REPO
    assert not any(a.startswith("--process_id") for a in args)


def test_multi_host_runs_share_one_coordinator_per_run():
  jobs = _dry_run("--sweep=rl.lr=1e-3,3e-4", "--num_processes=3", "--coordinator_port=2000",
                  f"--python={sys.executable}")
  assert len(jobs) == 6
  runs = {}
  for job in jobs:
    runs.setdefault(job["run"], []).append(job)
  assert len(runs) == 2
  ports = set()
  for processes in runs.values():
    (address,) = {p["env"]["JAX_COORDINATOR_ADDRESS"] for p in processes}
    ports.add(address.rsplit(":", 1)[1])
    assert sorted(p["process_id"] for p in processes) == [0, 1, 2]
    assert len({p["workdir"] for p in processes}) == 1  # Process 0 writes, all restore.
    for p in processes:
      tail = p["args"][-3:]
      assert tail == [f"--coordinator_address={address}", "--num_processes=3",
                      f"--process_id={p['process_id']}"]
  assert ports == {"2000", "2001"}  # Runs launched together must not share a coordinator.


@pytest.mark.parametrize("args, expected", [
    (["--sweep=rl.lr"], "--sweep='rl.lr'; allowed: field=value"),
    (["--sweep=rl.lr=1", "--sweep=rl.lr=2"], "names a field twice"),
    (["--set=rl.lr=1,2"], "has several values"),
    (["--num_processes=0"], "--num_processes=0; allowed: >= 1"),
    (["--run_flagfile=no/such.flags"], "no/such.flags: no such file"),
])
def test_bad_flags_are_one_line(args, expected):
  proc = _launch(sys.executable, "--dry_run", f"--python={sys.executable}", *args)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines


@pytest.mark.skipif(not os.environ.get("XM_PYTHON"),
                    reason="XM_PYTHON (an interpreter with requirements-xm.txt) is not set")
@pytest.mark.slow
def test_local_launch_trains_the_tiny_config(tmp_path):
  proc = _launch(os.environ["XM_PYTHON"], "--config=configs/demo.py:tiny",
                 "--set=train.iterations=1", "--sweep=rl.lr=1e-3", f"--python={sys.executable}",
                 f"--workdir_root={tmp_path}", "--title=ci", timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  (workdir,) = tmp_path.iterdir()
  assert workdir.name == "00_lr=1e-3"
  with open(workdir / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  assert any("eval/success_rate" in row for row in rows)
  assert any(row.get("learner/version") == 1 for row in rows)  # The one update happened.
  assert (workdir / "checkpoints" / "1").is_dir()
