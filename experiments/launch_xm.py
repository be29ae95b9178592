r"""Launches dvla_jax training runs with XManager: local jobs, config sweeps, multi-host groups.

Every job runs `python -m dvla_jax.main --flagfile=... --workdir=...` with the project's own
Python (an `xm.binary`, no Docker), plus `--config.<field>=<value>` for its point of the sweep.

Set-up: xmanager pins protobuf < 7 and the project pins a newer one, so the launcher gets an
environment of its own (the jobs still run in the project's `.venv`):

    python3 -m venv .venv-xm && .venv-xm/bin/pip install -r requirements-xm.txt

Local runs (from the repository root):

    .venv-xm/bin/python experiments/launch_xm.py --run_flagfile=configs/demo.flags \
        --sweep=rl.lr=1e-3,3e-4 --sweep=rl.ent_coef=0.003,0.01 --workdir_root=runs/sweep

runs four jobs at once (the cross product of the sweeps), each in `runs/sweep/<job name>`.
`--set=train.iterations=10` overrides a field in every job; `--config=configs/demo.py:tiny`
replaces the flags file's config; `--dry_run` prints the jobs as JSON without xmanager.

Multi-host: `--num_processes=N` makes each run an `xm.JobGroup` of N processes. Every process
gets the same coordinator address (process 0's host) and its own id, as the flags
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I` of `dvla_jax.main`, which
hands them to `jax.distributed.initialize`; `JAX_COORDINATOR_ADDRESS` is set as well. Locally
the coordinator is localhost at `--coordinator_port` (+ the run's index).

Cloud executors (GPU/TPU): the same jobs run on Vertex AI or Kubernetes (GKE) when the
executable is a container instead of a local binary, e.g.

    [executable] = experiment.package([xm.python_container(
        executor_spec=xm_local.Vertex.Spec(),          # or xm_local.Kubernetes.Spec()
        path=".", base_image="python:3.11",
        entrypoint=xm.ModuleName("dvla_jax.main"))])   # image: pip install -r requirements.txt
    executor = xm_local.Vertex(xm.JobRequirements(a100=8))          # 8 GPUs on one VM
    executor = xm_local.Kubernetes(xm.JobRequirements(tpu_v4=8))    # a TPU slice on GKE

Add `jax[cuda12]` (GPU) or `jax[tpu]` (TPU) to the image. On Vertex AI a multi-host
`JobGroup` of N jobs gets the coordinator as the first worker's host (Vertex sets
`CLUSTER_SPEC`); on Cloud TPU and GKE `jax.distributed.initialize()` finds the coordinator
by itself, so only `--num_processes` and `--process_id` need passing (or none on TPU). Both
need a GCP project (`gcloud auth application-default login`, `GOOGLE_CLOUD_PROJECT`) and a
`gs://` workdir, which the checkpointer and metrics writers accept.
"""

import itertools
import json
import logging as std_logging
import os
import re
import shlex
import sys
from typing import Any, Optional, Sequence

from absl import app
from absl import flags
from absl import logging

try:  # At import time, so that xmanager's own flags are parsed with the launcher's.
  from xmanager import xm  # pylint: disable=g-import-not-at-top
  from xmanager import xm_local  # pylint: disable=g-import-not-at-top
except ImportError:  # --dry_run needs no xmanager.
  xm = xm_local = None

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_USAGE_ERROR = 2

_RUN_FLAGFILE = flags.DEFINE_string("run_flagfile", "configs/demo.flags",
                                    "Flags file each job's dvla_jax.main reads ('' for none).")
_CONFIG = flags.DEFINE_string("config", "", "Config for every job (replaces the flags file's), "
                              "e.g. configs/demo.py:tiny.")
_SWEEP = flags.DEFINE_multi_string(
    "sweep", [], "A config field and its values, field=v1,v2,...; repeated flags sweep the "
    "cross product.")
_SET = flags.DEFINE_multi_string("set", [], "field=value set in every job.")
_WORKDIR_ROOT = flags.DEFINE_string("workdir_root", "runs/xm",
                                    "Each job's workdir is <workdir_root>/<job name>.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1,
                                      "Processes per run; > 1 makes a multi-host JobGroup.")
_COORDINATOR_HOST = flags.DEFINE_string("coordinator_host", "localhost",
                                        "Host of process 0 (local runs: localhost).")
_COORDINATOR_PORT = flags.DEFINE_integer("coordinator_port", 12355,
                                         "Coordinator port of the first run; run i uses +i.")
_PYTHON = flags.DEFINE_string("python", "", "Python that runs the jobs (default: the "
                              "repository's .venv/bin/python).")
_TITLE = flags.DEFINE_string("title", "dvla_jax", "Experiment title.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False,
                             "Print the jobs as JSON and exit; needs no xmanager.")

_FIELD = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
# xmanager's database migrations (alembic) log a page at INFO.
flags.FLAGS.set_default("verbosity", logging.WARNING)
std_logging.getLogger("alembic").setLevel(std_logging.WARNING)


class UsageError(ValueError):
  """A flag value the launcher cannot use (printed as one line, exit status 2)."""


class JobFailedError(RuntimeError):
  """A job exited with a non-zero status (the others are stopped); exit status 1."""


def parse_assignment(text: str, flag: str) -> tuple[str, list[str]]:
  """Splits `field=v1,v2` into ("field", ["v1", "v2"]).

  Args:
    text: the flag value.
    flag: the flag's name, for the error message.

  Returns:
    The field path and its values.

  Raises:
    UsageError: not of the form field=value[,value...].
  """
  field, sep, values = text.partition("=")
  field = field.strip().removeprefix("config.")
  parts = [v.strip() for v in values.split(",")]
  if not sep or not _FIELD.match(field) or not all(parts):
    raise UsageError(f"--{flag}={text!r}; allowed: field=value[,value...] "
                     "(e.g. rl.lr=1e-3,3e-4)")
  return field, parts


def sweep_points(sweeps: Sequence[str]) -> list[list[tuple[str, str]]]:
  """The cross product of `--sweep` values: one [(field, value), ...] per run."""
  axes = [parse_assignment(s, "sweep") for s in sweeps]
  fields = [f for f, _ in axes]
  if len(set(fields)) != len(fields):
    raise UsageError(f"--sweep names a field twice: {', '.join(fields)}")
  product = itertools.product(*(values for _, values in axes))
  return [list(zip(fields, values, strict=True)) for values in product]


def _job_name(index: int, point: Sequence[tuple[str, str]]) -> str:
  label = "_".join(f"{field.split('.')[-1]}={value}" for field, value in point)
  return re.sub(r"[^\w.=+-]", "-", f"{index:02d}_{label}" if label else f"{index:02d}")


def job_specs(python: str, run_flagfile: str, config: str, sweeps: Sequence[str],
              settings: Sequence[str], workdir_root: str, num_processes: int = 1,
              coordinator_host: str = "localhost", coordinator_port: int = 12355
              ) -> list[dict[str, Any]]:
  """The jobs of an experiment, as plain data (no xmanager needed).

  Args:
    python: interpreter that runs `-m dvla_jax.main`.
    run_flagfile: flags file for `dvla_jax.main` ("" for none).
    config: `--config` value for every job ("" keeps the flags file's).
    sweeps: `field=v1,v2` strings; the runs are their cross product.
    settings: `field=value` strings applied to every run.
    workdir_root: parent folder of the runs' workdirs.
    num_processes: processes per run (multi-host when > 1).
    coordinator_host: host of process 0.
    coordinator_port: coordinator port of run 0; run i uses coordinator_port + i.

  Returns:
    One dict per process: {"run", "name", "process_id", "workdir", "executable", "args",
    "env"}; processes of one run share "run" (they form one JobGroup).

  Raises:
    UsageError: a malformed sweep or setting, or num_processes < 1.
  """
  if num_processes < 1:
    raise UsageError(f"--num_processes={num_processes}; allowed: >= 1")
  fixed = []
  for text in settings:
    field, values = parse_assignment(text, "set")
    if len(values) != 1:
      raise UsageError(f"--set={text!r} has several values; allowed: one (use --sweep)")
    fixed.append((field, values[0]))
  jobs = []
  for index, point in enumerate(sweep_points(sweeps)):
    name = _job_name(index, point)
    workdir = os.path.join(workdir_root, name)
    args = ["-m", "dvla_jax.main"]
    args += [f"--flagfile={run_flagfile}"] if run_flagfile else []
    args += [f"--config={config}"] if config else []
    args += [f"--workdir={workdir}"]
    args += [f"--config.{field}={value}" for field, value in fixed + list(point)]
    env = {"PYTHONPATH": _REPO}
    if "JAX_PLATFORMS" in os.environ:
      env["JAX_PLATFORMS"] = os.environ["JAX_PLATFORMS"]
    address = f"{coordinator_host}:{coordinator_port + index}"
    for pid in range(num_processes):
      host_args, host_env = [], {}
      if num_processes > 1:
        host_args = [f"--coordinator_address={address}", f"--num_processes={num_processes}",
                     f"--process_id={pid}"]
        host_env = {"JAX_COORDINATOR_ADDRESS": address}
      jobs.append({"run": name, "name": name if num_processes == 1 else f"{name}_p{pid}",
                   "process_id": pid, "workdir": workdir, "executable": python,
                   "args": args + host_args, "env": dict(env, **host_env)})
  return jobs


def launch(jobs: Sequence[dict[str, Any]], title: str) -> int:
  """Runs `jobs` as local XManager jobs (one JobGroup per multi-process run); waits for them.

  Returns:
    The experiment id.
  """
  if xm is None:
    raise UsageError("xmanager is not installed in this Python; allowed: the launcher's own "
                     "environment (pip install -r requirements-xm.txt) or --dry_run")
  runs: dict[str, list[dict[str, Any]]] = {}
  for job in jobs:
    runs.setdefault(job["run"], []).append(job)
  try:
    with xm_local.create_experiment(experiment_title=title) as experiment:
      [executable] = experiment.package([
          xm.binary(path=jobs[0]["executable"], executor_spec=xm_local.LocalSpec())])
      for name, processes in runs.items():
        made = {p["name"]: xm.Job(executable=executable, executor=xm_local.Local(),
                                  args=list(p["args"]), env_vars=dict(p["env"]),
                                  name=p["name"])
                for p in processes}
        print(f"run {name}: {len(made)} process(es), workdir {processes[0]['workdir']}")
        experiment.add(made[processes[0]["name"]] if len(made) == 1 else xm.JobGroup(**made))
  except RuntimeError as e:  # xmanager's "Process ... returned non-zero code".
    raise JobFailedError(str(e).splitlines()[-1]) from None
  return experiment.experiment_id


def _absolute(path: str) -> str:
  return path if not path or "://" in path or os.path.isabs(path) else os.path.abspath(path)


def _default_python() -> str:
  python = os.path.join(_REPO, ".venv", "bin", "python")
  if not os.path.exists(python):
    raise UsageError(f"no project environment at {python}; allowed: run `make test` first "
                     "or pass --python")
  return python


def _config_path(config: str) -> str:
  """`--config` with its file part made absolute (the `:arg` suffix kept)."""
  path, sep, arg = config.partition(":")
  return _absolute(path) + sep + arg if config else ""


def main(argv: Sequence[str]) -> Optional[int]:
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments {' '.join(argv[1:])!r}; allowed: --flags only")
  for path in (_RUN_FLAGFILE.value, _CONFIG.value.partition(":")[0]):
    if path and not os.path.isfile(path):
      raise UsageError(f"{path}: no such file")
  jobs = job_specs(
      python=_PYTHON.value or _default_python(), run_flagfile=_absolute(_RUN_FLAGFILE.value),
      config=_config_path(_CONFIG.value), sweeps=_SWEEP.value, settings=_SET.value,
      workdir_root=_absolute(_WORKDIR_ROOT.value), num_processes=_NUM_PROCESSES.value,
      coordinator_host=_COORDINATOR_HOST.value, coordinator_port=_COORDINATOR_PORT.value)
  if _DRY_RUN.value:
    print(json.dumps(jobs, indent=2))
    for job in jobs:
      print(f"# {job['name']}: {shlex.join([job['executable'], *job['args']])}", file=sys.stderr)
    return 0
  # Flags files name configs relative to the repository root, so the jobs start there.
  os.chdir(_REPO)
  experiment_id = launch(jobs, _TITLE.value)
  print(f"experiment {experiment_id}: {len(jobs)} process(es) finished")
  return 0


def run() -> None:
  """Entry point; a usage error is one line on stderr and exit status 2."""
  def checked(argv):
    try:
      return main(argv)
    except UsageError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(_USAGE_ERROR)
    except JobFailedError as e:
      print(f"error: a job failed ({e}); its output above says why", file=sys.stderr)
      sys.exit(1)
  app.run(checked)


if __name__ == "__main__":
  run()
