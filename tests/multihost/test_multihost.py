"""Two processes on localhost (jax.distributed, gloo): weights cross processes into the actors'
in-place weight double buffer, orbax round trip.

Each process runs `_worker.py` (the same program) with 3 fake CPU devices; the learner plane
is on process 0 and the actor plane has one device in each process. Every child is killed
with SIGKILL if the pair has not finished within the timeout.
"""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

_TIMEOUT_S = 120
_WORKER = os.path.join(os.path.dirname(__file__), "_worker.py")
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _events(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line[len("EVENT "):]) for line in f if line.startswith("EVENT ")]


def _run_pair(workdir: str, logs: list[str]) -> list[int]:
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")])))
  env.pop("XLA_FLAGS", None)  # The worker picks its own device count.
  procs = []
  try:
    for pid, log in enumerate(logs):
      with open(log, "w", encoding="utf-8") as out:
        procs.append(subprocess.Popen(
            [sys.executable, _WORKER, str(pid), str(len(logs)), str(port), workdir],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=_ROOT))
    deadline = time.monotonic() + _TIMEOUT_S
    codes = []
    for proc in procs:
      codes.append(proc.wait(timeout=max(deadline - time.monotonic(), 1.0)))
    return codes
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()  # SIGKILL: a hung collective ignores gentler signals.
        proc.wait()


def test_two_processes_share_weights_and_checkpoint(tmp_path):
  logs = [str(tmp_path / f"process{i}.log") for i in range(2)]
  workdir = str(tmp_path / "run")
  try:
    codes = _run_pair(workdir, logs)
  except subprocess.TimeoutExpired:
    pytest.fail(f"the 2-process run hung (> {_TIMEOUT_S}s); logs in {tmp_path}")
  for code, log in zip(codes, logs):
    with open(log, encoding="utf-8") as f:
      assert code == 0, f.read()[-4000:]
  events = [_events(log) for log in logs]
  for pid, ev in enumerate(events):  # Joined through dvla_jax.main's flags.
    assert ev[0] == {"kind": "init", "process_index": pid, "process_count": 2,
                     "collectives": "gloo"}

  # Each process's actor acts with every new version, and holds exactly the learner's bytes.
  learner = {e["version"]: e["checksum"] for e in events[0] if e["kind"] == "learner"}
  assert sorted(learner) == [1, 2, 3]
  assert len(set(learner.values())) == 3  # The weights really change between versions.
  actors = [[e for e in ev if e["kind"] == "actor"] for ev in events]
  for acts in actors:
    assert [a["version"] for a in acts] == [1, 2, 3]
    assert all(a["checksum"] == pytest.approx(learner[a["version"]], rel=1e-6) for a in acts)
  assert actors[0][0]["device"] != actors[1][0]["device"]
  for a0, a1 in zip(*actors):  # Same weights and observation: the same action in both.
    assert a0["action"] == pytest.approx(a1["action"], rel=1e-6)

  # Orbax: both processes saved and restored the same checkpoint.
  restored = [next(e for e in ev if e["kind"] == "restored") for ev in events]
  for r in restored:
    assert r["step"] == 3 and r["process_count"] == 2
    assert r["params_checksum"] == pytest.approx(learner[3], rel=1e-6)
    assert r["state_checksum"] == pytest.approx(r["saved_checksum"], rel=1e-6)
  assert restored[0]["learner_checksum"] == pytest.approx(restored[0]["saved_checksum"])
  resumed = restored[0]["resumed"]  # Optimizer state came back too: resuming == continuing.
  assert resumed["version"] == 4
  assert resumed["checksum"] == pytest.approx(resumed["continued_checksum"], rel=1e-6)
  assert resumed["checksum"] != pytest.approx(learner[3])
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "3"))

  # Only process 0 writes logs: one metrics line per iteration, not one per process.
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    lines = [json.loads(line) for line in f]
  assert [line["step"] for line in lines] == [1, 2, 3]


@pytest.mark.parametrize("args, message", [
    (["--num_processes=0"], "--num_processes=0 is out of range"),
    (["--num_processes=2", "--process_id=2"], "--process_id=2 is out of range; allowed: 0 .. 1"),
    (["--coordinator_address=nohostport", "--num_processes=2", "--process_id=0"],
     "--coordinator_address='nohostport' is malformed"),
])
def test_main_rejects_bad_distributed_flags(tmp_path, args, message):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=_ROOT)
  result = subprocess.run(
      [sys.executable, "-m", "dvla_jax.main", "--config=configs/demo.py:tiny",
       f"--workdir={tmp_path}", *args], capture_output=True, text=True, env=env, cwd=_ROOT,
      timeout=_TIMEOUT_S, check=False)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1].startswith(f"config error: {message}"), (
      result.stderr[-2000:])
