"""MetricsWriter: JSON lines, TensorBoard events that read back, console line; device fetch."""

import json
import struct
import time

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from dvla_jax.training import metrics


def _read_tb_scalars(directory) -> dict[str, list[tuple[int, float]]]:
  """Parses TFRecord framing (u64 length, u32 crc, data, u32 crc) into Event protos."""
  scalars = {}
  files = sorted(directory.glob("events.out.tfevents*"))
  assert files, "no TensorBoard event file"
  for path in files:
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack_from("<Q", data, offset)
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def test_writes_jsonl_tensorboard_and_console(tmp_path, capsys):
  writer = metrics.MetricsWriter(str(tmp_path), total_iterations=10)
  writer.write(1, {"learner/policy_loss": np.float32(0.5), "learner/value_loss": 2,
                   "eval/success_rate": 0.25, "sim/env_steps_per_s": 1234.0})
  writer.write(2, {"learner/policy_loss": 0.25, "rollout/success_rate": jnp.float32(0.75)})
  # Lines are flushed as they are written, before close.
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  writer.close()

  rows = [json.loads(line) for line in lines]
  assert rows[0] == {"step": 1, "learner/policy_loss": 0.5, "learner/value_loss": 2,
                     "eval/success_rate": 0.25, "sim/env_steps_per_s": 1234.0}
  assert isinstance(rows[0]["learner/policy_loss"], float)
  assert rows[1]["step"] == 2 and rows[1]["rollout/success_rate"] == 0.75

  scalars = _read_tb_scalars(tmp_path / "tb")
  assert scalars["learner/policy_loss"] == [(1, 0.5), (2, 0.25)]
  assert scalars["eval/success_rate"] == [(1, 0.25)]

  out = capsys.readouterr().out.splitlines()
  assert len(out) == 2
  assert "iteration 1/10" in out[0] and "1,234 env steps/s" in out[0]
  assert "eval success 0.25" in out[0] and "policy loss 0.5000" in out[0]
  # Without a new evaluation the line repeats the latest one.
  assert "iteration 2/10" in out[1] and "eval success 0.25 (latest)" in out[1]
  assert "rollout success 0.75" in out[1]


def test_appends_to_existing_jsonl(tmp_path):
  for step in (1, 2):
    with metrics.MetricsWriter(str(tmp_path), total_iterations=2, console=False) as writer:
      writer.write(step, {"x": step})
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [row["step"] for row in rows] == [1, 2]


def test_env_steps_rate_from_cumulative_count(tmp_path, capsys):
  with metrics.MetricsWriter(str(tmp_path), total_iterations=3) as writer:
    writer.write(1, {"sim/env_steps": 0})
    writer.write(2, {"sim/env_steps": 1000})
    writer.write(2, {"sim/env_steps": 1000, "eval/success_rate": 0.5})
  out = capsys.readouterr().out.splitlines()
  assert "env steps/s" not in out[0]
  assert "env steps/s" in out[1]
  # An evaluation at the same env-step count shows no (zero) rate.
  assert "env steps/s" not in out[2]


def test_device_get_metrics_flattens_and_converts():
  fetched = metrics.device_get_metrics(
      {"learner": {"loss": jnp.float32(1.5), "steps": jnp.int32(3)}, "ok": jnp.bool_(True)})
  assert fetched == {"learner/loss": 1.5, "learner/steps": 3, "ok": 1}
  assert isinstance(fetched["learner/loss"], float)
  assert isinstance(fetched["learner/steps"], int)


def test_rejects_non_scalar(tmp_path):
  with pytest.raises(ValueError, match="learner/x"):
    metrics.device_get_metrics({"learner/x": jnp.zeros(3)})


class _RecordingWandb:
  """Stands in for the wandb module: records what the writer asks of it."""

  def __init__(self):
    self.init_kwargs, self.logged, self.finished = None, [], 0

  def init(self, **kwargs):
    self.init_kwargs = kwargs
    return self

  def log(self, values, step):
    self.logged.append((step, dict(values)))

  def finish(self):
    self.finished += 1


def test_wandb_writer_calls(tmp_path, monkeypatch):
  """The writer opens one resumable run named after the workdir, logs every scalar at its
  iteration, and finishes the run on close."""
  fake = _RecordingWandb()
  monkeypatch.setitem(__import__("sys").modules, "wandb", fake)
  workdir = tmp_path / "my run"
  with metrics.MetricsWriter(str(workdir), total_iterations=2, console=False,
                             wandb_project="proj", config={"rl": {"lr": 1e-4}}) as writer:
    writer.write(1, {"learner/policy_loss": 0.5, "eval/success_rate": 0.25})
    writer.write(2, {"learner/policy_loss": 0.25})
  kwargs = fake.init_kwargs
  assert kwargs["project"] == "proj" and kwargs["name"] == "my run"
  assert kwargs["resume"] == "allow" and kwargs["id"].startswith("my-run-")
  assert kwargs["config"] == {"rl": {"lr": 1e-4}} and kwargs["dir"] == str(workdir)
  assert fake.logged == [(1, {"learner/policy_loss": 0.5, "eval/success_rate": 0.25}),
                         (2, {"learner/policy_loss": 0.25})]
  assert fake.finished == 1
  # Another workdir of the same name is another run; the same workdir resumes its run.
  other = _RecordingWandb()
  monkeypatch.setitem(__import__("sys").modules, "wandb", other)
  metrics.open_wandb("proj", str(tmp_path / "elsewhere" / "my run"))
  assert other.init_kwargs["id"] != kwargs["id"]
  metrics.open_wandb("proj", str(workdir))
  assert other.init_kwargs["id"] == kwargs["id"]


def test_wandb_writer_logs_offline(tmp_path, monkeypatch):
  """With the real package: an offline W&B run (no account, no network) holds every scalar."""
  wandb = pytest.importorskip("wandb")
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  with metrics.MetricsWriter(str(tmp_path), total_iterations=2, console=False,
                             wandb_project="dvla-test", config={"rl": {"lr": 1e-4}}) as writer:
    writer.write(1, {"learner/policy_loss": 0.5, "eval/success_rate": 0.25})
    writer.write(2, {"learner/policy_loss": 0.25})
  # `finish` tells W&B's service process the run is done; the service writes the run's
  # records on its own time. Shutting the service down waits for it.
  wandb.teardown()
  runs = list((tmp_path / "wandb").glob("offline-run-*"))
  assert len(runs) == 1
  (records,) = runs[0].glob("*.wandb")  # The run's records, synced later by `wandb sync`.
  deadline = time.monotonic() + 60
  data = records.read_bytes()
  while data.count(b"learner/policy_loss") < 2 and time.monotonic() < deadline:
    time.sleep(0.5)
    data = records.read_bytes()
  # History rows hold each key with its value as JSON text: both steps of the policy loss.
  assert data.count(b"learner/policy_loss") >= 2 and b"eval/success_rate" in data
  assert b"0.25" in data and b"0.5" in data


def test_wandb_missing_is_one_clear_error(tmp_path, monkeypatch):
  monkeypatch.setitem(__import__("sys").modules, "wandb", None)
  with pytest.raises(metrics.WandbMissingError, match="pip install wandb"):
    metrics.MetricsWriter(str(tmp_path), total_iterations=1, console=False,
                          wandb_project="p")
