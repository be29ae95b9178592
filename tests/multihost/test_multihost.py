"""Two processes on localhost (jax.distributed, gloo).

* `_worker.py`: weights cross processes into the actors' in-place weight double buffer, orbax
  round trip (the learner plane on process 0, the actor plane on one device of each).
* `_train_worker.py`: the real entry point trains with the async pipeline across both
  processes (each simulates and acts on its own devices, the learner mesh spans both),
  stops both processes at the same update when one gets SIGTERM, resumes from their
  checkpoint, and a process whose lane fails takes the other down with it.

Each process has 3 fake CPU devices. Every child is killed with SIGKILL if the pair has not
finished within the timeout.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from typing import Optional

import pytest

_TIMEOUT_S = 120
_WORKER = os.path.join(os.path.dirname(__file__), "_worker.py")
_TRAIN_WORKER = os.path.join(os.path.dirname(__file__), "_train_worker.py")
_TRAIN_TIMEOUT_S = 420
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _events(log: str) -> list[dict]:
  """The events the worker that wrote `log` recorded (`_common.emit`)."""
  with open(log + ".events", encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def _run_pair(workdir: str, logs: list[str], worker: str = _WORKER, args: tuple = (),
              timeout_s: float = _TIMEOUT_S,
              sigterm: Optional[tuple[int, str]] = None) -> list[int]:
  """Runs `worker PROCESS_ID COUNT PORT WORKDIR *args` once per log; returns exit codes.

  `sigterm=(i, text)`: sends SIGTERM to process i once its log contains `text`.

  Raises:
    subprocess.TimeoutExpired: the processes were not done within `timeout_s` (all killed).
  """
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")])))
  env.pop("XLA_FLAGS", None)  # The worker picks its own device count.
  procs = []
  try:
    for pid, log in enumerate(logs):
      open(log + ".events", "w", encoding="utf-8").close()  # The worker appends.
      with open(log, "w", encoding="utf-8") as out:
        procs.append(subprocess.Popen(
            [sys.executable, worker, str(pid), str(len(logs)), str(port), workdir,
             *map(str, args)],
            stdout=out, stderr=subprocess.STDOUT, env=dict(env, EVENTS_FILE=log + ".events"),
            cwd=_ROOT))
    deadline = time.monotonic() + timeout_s
    while sigterm is not None and procs[sigterm[0]].poll() is None:
      with open(logs[sigterm[0]], encoding="utf-8") as f:
        if sigterm[1] in f.read():
          procs[sigterm[0]].send_signal(signal.SIGTERM)
          break
      if time.monotonic() > deadline:
        raise subprocess.TimeoutExpired(worker, timeout_s)
      time.sleep(0.2)
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


def _train_pair(tmp_path, name: str, workdir: str, *args,
                sigterm=None) -> tuple[list[int], list[list[dict]]]:
  logs = [str(tmp_path / f"{name}{i}.log") for i in range(2)]
  start = time.monotonic()
  try:
    codes = _run_pair(workdir, logs, _TRAIN_WORKER, args, timeout_s=_TRAIN_TIMEOUT_S,
                      sigterm=sigterm)
  except subprocess.TimeoutExpired:
    pytest.fail(f"{name}: the 2-process run hung (> {_TRAIN_TIMEOUT_S}s); logs in {tmp_path}")
  print(f"{name}: {time.monotonic() - start:.0f}s")
  return codes, [_events(log) for log in logs]


def _check_versions(events: list[list[dict]], start: int, stop: int, acted_new: bool,
                    last_sent: bool = True) -> dict[int, float]:
  """Both processes' learners published versions start+1 .. stop with the same (sharded)
  params, and each process's actors received them in order with exactly those weights (the
  last one too unless `last_sent` is False: a stop may come before it is sent), and acted
  with versions that only grow and never run ahead of what they received (`acted_new`: and
  reached a version newer than `start`). Returns version -> checksum."""
  learners = [[e for e in ev if e["kind"] == "learner"] for ev in events]
  expected = list(range(start + 1, stop + 1))
  assert [e["version"] for e in learners[0]] == expected
  assert learners[0] == learners[1]  # One learner, sharded over both processes.
  assert all(e["sharded"] for e in learners[0])
  checksum = {e["version"]: e["checksum"] for e in learners[0]}
  assert len(set(checksum.values())) == len(expected)  # The weights really change.
  actor_devices = []
  for ev in events:
    (first,) = [e for e in ev if e["kind"] == "start"]
    assert first["version"] == start and first["processes"] == 2
    received, acted = start, []
    for e in ev:
      if e["kind"] == "actor":
        assert e["version"] == received + 1, "a version skipped or repeated"
        assert e["checksum"] == pytest.approx(checksum[e["version"]], rel=1e-6)
        received = e["version"]
        actor_devices.append(tuple(e["devices"]))
      elif e["kind"] == "step":
        assert e["version"] <= received
        acted.append(e["version"])
    assert received == stop or (not last_sent and received == stop - 1)
    assert acted == sorted(acted), acted
    # While the first update compiles, inference fills every slot with the starting weights;
    # after a few more updates it has acted with the learner's new ones.
    assert acted[-1] > start or not acted_new, acted
  assert len(set(actor_devices)) == 2  # Each process acts on its own device.
  return checksum


def _start_checksum(events: list[list[dict]]) -> list[float]:
  return [next(e["checksum"] for e in ev if e["kind"] == "start") for ev in events]


def test_async_pipeline_trains_across_two_processes(tmp_path):
  workdir = str(tmp_path / "run")
  # Towards 12 iterations; SIGTERM to process 0 alone once it has logged iteration 5: both
  # processes stop after the same update, checkpoint it together and exit 0. (While the first
  # update compiles, inference fills every slot with version 0; the later updates leave it
  # room to act with new versions even on a loaded machine.)
  codes, events = _train_pair(tmp_path, "preempt", workdir, 12, sigterm=(0, "iteration 5/12"))
  assert codes == [0, 0], f"logs in {tmp_path}"
  stopped = []
  for i in range(2):
    with open(str(tmp_path / f"preempt{i}.log"), encoding="utf-8") as f:
      stopped += [int(m) for m in re.findall(r"stopped at iteration (\d+) of 12", f.read())]
  assert len(stopped) == 2 and stopped[0] == stopped[1] and 5 <= stopped[0] < 12, stopped
  k = stopped[0]
  checksum = _check_versions(events, 0, k, acted_new=True, last_sent=False)
  first = _start_checksum(events)
  assert first[0] == pytest.approx(first[1], rel=1e-6)
  assert max(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))) == k
  # Only process 0 writes logs: the first evaluation, then one line per iteration.
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    lines = [json.loads(line) for line in f]
  assert [line["step"] for line in lines] == list(range(k + 1))
  assert all(line["sim/env_steps"] == 32 * line["step"] for line in lines)  # 2 x 4 x 4.
  assert len(os.listdir(os.path.join(workdir, "tb"))) == 1  # One TensorBoard event file.

  # Resume from k; process 1's gradient lane fails after two updates: both exit 1 at once
  # (process 0 fails at its next collective with process 1), keeping checkpoint k + 2.
  codes, events = _train_pair(tmp_path, "fault", workdir, k + 4, "gradient")
  assert codes == [1, 1], f"logs in {tmp_path}"
  assert all(c == pytest.approx(checksum[k], rel=1e-6) for c in _start_checksum(events))
  _check_versions(events, k, k + 2, acted_new=False)
  with open(str(tmp_path / "fault1.log"), encoding="utf-8") as f:
    assert "fault injected into the gradient lane" in f.read()
  with open(str(tmp_path / "fault0.log"), encoding="utf-8") as f:
    assert "process 0 failed; leaving the run" in f.read()  # Taken down by its peer.
  assert max(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))) == k + 2
