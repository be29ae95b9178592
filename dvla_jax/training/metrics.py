"""Metric writers chosen by `main`: JSON lines, TensorBoard scalars and a console line.

Library code never writes metrics itself: it hands a flat dict of namespaced scalars
(`learner/policy_loss`, `rollout/success_rate`, `eval/success_rate`, `sim/env_steps`, ...)
to a callback, and `MetricsWriter.write` is that callback. Device values are fetched once
per log interval with `device_get_metrics`.

Files (process 0 only, so that a multi-host run writes each line once):
  <workdir>/metrics.jsonl   one JSON object per `write`: {"step": step, **metrics}
  <workdir>/tb/             TensorBoard event files, one scalar per key
"""

import json
import math
import os
import time
from typing import Any, Mapping, Optional, Union

import jax
import numpy as np
import rich.console
import rich.text
import tensorboardX

Scalar = Union[float, int]

# Keys the console line looks for; missing ones are left out of the line.
_STEPS_PER_S_KEYS = ("sim/env_steps_per_s", "env_steps_per_s")
_ENV_STEPS_KEYS = ("sim/env_steps", "env_steps")
_CONSOLE_KEYS = (
    ("rollout/success_rate", "rollout success", "{:.2f}"),
    ("learner/policy_loss", "policy loss", "{:.4f}"),
    ("learner/value_loss", "value loss", "{:.4f}"),
)


def _scalar(key: str, value: Any) -> Scalar:
  """A python int/float from a python, numpy or (fetched) jax scalar."""
  array = np.asarray(value)
  if array.size != 1:
    raise ValueError(f"metric {key!r} has shape {array.shape}; expected a scalar")
  item = array.reshape(()).item()
  if isinstance(item, bool):
    return int(item)
  if not isinstance(item, (int, float)):
    raise ValueError(f"metric {key!r} is {type(item).__name__}; expected a number")
  return item


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, f"{prefix}{key}/"))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def device_get_metrics(tree: Mapping[str, Any]) -> dict[str, Scalar]:
  """Fetches a (nested) dict of device scalars in one transfer.

  Args:
    tree: metric name -> scalar array (jax, numpy or python); nested dicts are flattened
      with "/" ("learner": {"loss": x} -> "learner/loss").

  Returns:
    Flat dict of python ints and floats.
  """
  host = jax.device_get(dict(tree))
  return {key: _scalar(key, value) for key, value in _flatten(host).items()}


def _format(value: Scalar, spec: str) -> str:
  return spec.format(value) if isinstance(value, float) and math.isfinite(value) else str(value)


class MetricsWriter:
  """Writes each metrics dict to metrics.jsonl, TensorBoard and a console line."""

  def __init__(self, workdir: str, total_iterations: int, console: bool = True):
    """Opens the writers (only on process 0; other processes write nothing).

    Args:
      workdir: run directory; created if missing.
      total_iterations: N in the console's "iteration i/N".
      console: print one progress line per `write`.
    """
    self._total = total_iterations
    self._enabled = jax.process_index() == 0
    self._console = rich.console.Console(highlight=False) if console and self._enabled else None
    self._last_eval: Optional[Scalar] = None
    self._last_env_steps: Optional[tuple[float, float]] = None  # (env steps, wall time)
    self._jsonl = None
    self._tb = None
    if self._enabled:
      os.makedirs(workdir, exist_ok=True)
      self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
      self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")
      self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tb"))

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Records `metrics` (flat dict of scalars) for iteration `step`.

    Args:
      step: the training iteration (the TensorBoard x axis).
      metrics: name -> python/numpy scalar; device arrays should come through
        `device_get_metrics` so that they are fetched once.
    """
    if not self._enabled:
      return
    values = {key: _scalar(key, value) for key, value in metrics.items()}
    self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
    self._jsonl.flush()
    for key, value in values.items():
      self._tb.add_scalar(key, float(value), global_step=int(step))
    self._tb.flush()
    if self._console is not None:
      self._console.print(self._progress_line(int(step), values), soft_wrap=True)

  def _steps_per_s(self, values: Mapping[str, Scalar]) -> Optional[float]:
    """The reported rate, else one from the growth of the cumulative env-step count."""
    rate = next((float(values[k]) for k in _STEPS_PER_S_KEYS if k in values), None)
    count = next((float(values[k]) for k in _ENV_STEPS_KEYS if k in values), None)
    if count is None:
      return rate
    now, previous = (count, time.perf_counter()), self._last_env_steps
    self._last_env_steps = now
    # A write without new env steps (an evaluation) has no rate of its own.
    if rate is None and previous is not None and now[0] > previous[0] and now[1] > previous[1]:
      rate = (now[0] - previous[0]) / (now[1] - previous[1])
    return rate

  def _progress_line(self, step: int, values: Mapping[str, Scalar]) -> rich.text.Text:
    line = rich.text.Text()
    line.append(f"iteration {step}/{self._total}", style="bold")
    rate = self._steps_per_s(values)
    if rate is not None:
      line.append(f" | {rate:,.0f} env steps/s")
    if "eval/success_rate" in values:
      self._last_eval = values["eval/success_rate"]
      line.append(f" | eval success {_format(self._last_eval, '{:.2f}')}", style="green")
    elif self._last_eval is not None:
      line.append(f" | eval success {_format(self._last_eval, '{:.2f}')} (latest)")
    for key, label, spec in _CONSOLE_KEYS:
      if key in values:
        line.append(f" | {label} {_format(values[key], spec)}")
    return line

  def close(self) -> None:
    """Flushes and closes the files."""
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def __enter__(self) -> "MetricsWriter":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
