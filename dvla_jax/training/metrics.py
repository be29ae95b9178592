"""Metric writers chosen by `main`: JSON lines, TensorBoard scalars, a console line, and
optionally Weights & Biases.

Library code never writes metrics itself: it hands a flat dict of namespaced scalars
(`learner/policy_loss`, `rollout/success_rate`, `eval/success_rate`, `sim/env_steps`, ...)
to a callback, and `MetricsWriter.write` is that callback. Device values are fetched once
per log interval with `device_get_metrics`.

Files (process 0 only, so that a multi-host run writes each line once):
  <workdir>/metrics.jsonl   one JSON object per `write`: {"step": step, **metrics}
  <workdir>/tb/             TensorBoard event files, one scalar per key
  W&B (`train.wandb_project`)  the same scalars, when the optional `wandb` package is
                            installed (offline runs too: WANDB_MODE=offline)
"""

import hashlib
import json
import math
import os
import time
from typing import Any, Mapping, Optional, Union

import jax
import numpy as np
import rich.text
import tensorboardX

from dvla_jax.training import console as console_lib

Scalar = Union[float, int]

# Keys the console line looks for; missing ones are left out of the line.
_STEPS_PER_S_KEYS = ("sim/env_steps_per_s", "env_steps_per_s")
_ENV_STEPS_KEYS = ("sim/env_steps", "env_steps")
_CONSOLE_KEYS = (
    ("sft/loss", "loss", "{:.3f}"),
    ("sft/token_accuracy", "token accuracy", "{:.3f}"),
    ("sft/holdout_loss", "held-out loss", "{:.3f}"),
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


class WandbMissingError(ImportError):
  """`train.wandb_project` is set but the optional `wandb` package is not installed."""


def open_wandb(project: str, workdir: str, config: Optional[Mapping[str, Any]] = None):
  """A W&B run for `workdir` in `project` (resumed if it exists), or WandbMissingError."""
  try:
    import wandb  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise WandbMissingError(f"train.wandb_project={project!r} needs the optional wandb package;"
                            " allowed: pip install wandb, or train.wandb_project=''") from None
  name = os.path.basename(os.path.normpath(workdir)) or "run"
  # One W&B run per workdir: a resumed run continues it, another workdir of the same name
  # does not.
  digest = hashlib.sha1(os.path.abspath(workdir).encode()).hexdigest()[:8]
  run_id = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:48] + "-" + digest
  return wandb.init(project=project, name=name, id=run_id, resume="allow",
                    dir=workdir if "://" not in workdir else None,
                    config=dict(config) if config is not None else None)


class MetricsWriter:
  """Writes each metrics dict to metrics.jsonl, TensorBoard and a console line."""

  def __init__(self, workdir: str, total_iterations: int, console: bool = True,
               wandb_project: str = "", config: Optional[Mapping[str, Any]] = None):
    """Opens the writers (only on process 0; other processes write nothing).

    Args:
      workdir: run directory; created if missing.
      total_iterations: N in the console's "iteration i/N".
      console: print one progress line per `write`.
      wandb_project: also log to this W&B project ("" = no W&B); the run is named after the
        workdir and resumes with it.
      config: the run config, stored with the W&B run.
    """
    self._total = total_iterations
    self._enabled = jax.process_index() == 0
    self._console = console_lib.get() if console and self._enabled else None
    self._first_write: Optional[tuple[int, float]] = None  # (iteration, wall time)
    self._wandb = None
    self._last_eval: Optional[Scalar] = None
    self._last_env_steps: Optional[tuple[float, float]] = None  # (env steps, wall time)
    self._jsonl = None
    self._tb = None
    if self._enabled:
      os.makedirs(workdir, exist_ok=True)
      self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
      self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")
      self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tb"))
      if wandb_project:
        self._wandb = open_wandb(wandb_project, workdir, config)

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
    if self._wandb is not None:
      self._wandb.log(values, step=int(step))
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
    if "warmstart/step" in values:  # The warm start's own progress, before iteration 0.
      line.append(f"warm start step {values['warmstart/step']}", style="bold")
      for key, label in (("warmstart/loss", "loss"), ("warmstart/token_accuracy",
                                                      "token accuracy")):
        if key in values:
          line.append(f" | {label} {_format(values[key], '{:.3f}')}")
      return line
    line.append(f"iteration {step}/{self._total}", style="bold")
    rate = self._steps_per_s(values)
    if rate is not None:
      line.append(f" | {rate:,.0f} env steps/s")
    if "eval/success_rate" in values:
      self._last_eval = values["eval/success_rate"]
      line.append(f" | eval success {_format(self._last_eval, '{:.2f}')}", style="green")
      if "eval/episode_return" in values:
        line.append(f" | eval return {_format(values['eval/episode_return'], '{:.2f}')}")
    elif self._last_eval is not None:
      line.append(f" | eval success {_format(self._last_eval, '{:.2f}')} (latest)")
    for key, label, spec in _CONSOLE_KEYS:
      if key in values:
        line.append(f" | {label} {_format(values[key], spec)}")
    eta = self._eta(step)
    if eta is not None:
      line.append(f" | ETA {eta}")
    return line

  def _eta(self, step: int) -> Optional[str]:
    """Time left at the mean time per iteration since the first training write."""
    now = time.perf_counter()
    if step >= self._total:
      return None
    if self._first_write is None or step <= self._first_write[0]:
      if step > 0 and self._first_write is None:
        self._first_write = (step, now)
      return None
    first, since = self._first_write
    left = (self._total - step) * (now - since) / (step - first)
    minutes, seconds = divmod(int(round(left)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"

  def close(self) -> None:
    """Flushes and closes the files."""
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    if self._wandb is not None:
      self._wandb.finish()
      self._wandb = None

  def __enter__(self) -> "MetricsWriter":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
