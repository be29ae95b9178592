r"""Trains a VLA policy with RL: `python -m dvla_jax.main --flagfile=configs/demo.flags`.

One `--config` flag (a config file, fields overridable as `--config.rl.lr=1e-4`) and one
process flag, `--workdir` (checkpoints, metrics.jsonl, TensorBoard events; a run resumes
from the newest checkpoint there). Example:

    python -m dvla_jax.main --config=configs/demo.py:tiny --workdir=/tmp/dvla_tiny \
        --config.rl.lr=1e-4

Supervised warm-start first, then RL from it (`--config.mode=sft`, `dvla_jax.training.sft`):

    python -m dvla_jax.main --config=configs/demo.py --workdir=/tmp/sft --config.mode=sft
    python -m dvla_jax.main --config=configs/demo.py --workdir=/tmp/rl \
        --config.rl.init_from=/tmp/sft

A user mistake (unknown or mistyped config field, value out of range, a malformed override
line in a flagfile, a missing config file or one that raises or has no `get_config`, an
`env.import_tasks` module that is missing or raises, a workdir whose checkpoint belongs to
another model) prints one line, `config error: ...`, to stderr and exits with status 2 before
anything is compiled or written.

The console shows one summary line, progress bars with ETAs for the long phases and one line
per log step (`dvla_jax.training.console`); the resolved config goes to
`<workdir>/config.json`. absl INFO logs are off unless `--verbosity` is given.
"""

import logging as std_logging
import os
import re
import sys
from typing import NoReturn, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from dvla_jax.config import config_check

_USAGE_ERROR = 2
CONFIG_FILE = "config.json"  # The resolved config, written to the workdir by every run.
_ALLOWED = {
    "config": "a config file, e.g. configs/demo.py or configs/demo.py:tiny",
    "workdir": "a directory path (created if missing)",
}


def _fail(message: str) -> NoReturn:
  print(f"config error: {message}", file=sys.stderr)
  sys.exit(_USAGE_ERROR)


try:
  _CONFIG = config_flags.DEFINE_config_file(
      "config", None, "Config file, optionally with an argument: configs/demo.py:tiny. "
      "Fields are overridden with --config.<group>.<field>=value.", lock_config=True)
except flags.Error as e:  # ml_collections already reads --flagfile while defining the flag.
  _fail(str(e).replace("ERROR:: ", ""))
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints and metrics; a run resumes from it.")
# Multi-host runs (jax.distributed); each falls back to JAX's own environment variable.
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0 in a multi-process run "
    "(default: $JAX_COORDINATOR_ADDRESS; unset and no --num_processes: one process).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Processes in the run (default: $JAX_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index, 0 .. num_processes - 1 (default: "
    "$JAX_PROCESS_ID).")


def _last_line(text: str) -> str:
  # Wrapped errors (a failing get_config) embed a traceback: its last line is the cause.
  lines = [line.strip() for line in str(text).splitlines() if line.strip()]
  return lines[-1] if lines else repr(text)


def _config_argument(argv: Sequence[str]) -> Optional[str]:
  """The last --config=... value in argv after expanding --flagfile, or None."""
  value = None
  for arg in flags.FLAGS.read_flags_from_files(list(argv), force_gnu=False):
    match = re.match(r"^--?config=(.*)$", arg)
    if match:
      value = match.group(1)
  return value


def _override_problem(config: ml_collections.ConfigDict, arg: str) -> Optional[str]:
  """What is wrong with one `--config.<path>[=value]` override of `config`, or None.

  Checked here, against the config file's own tree and the fields' declared types, rather
  than by rewording what absl and ml_collections say when they reject it.
  """
  name, eq, value = arg.lstrip("-").partition("=")
  negated = name.startswith("noconfig.")
  path = name.split(".", 1)[1]
  node, walked = config, []
  for key in path.split("."):
    if not isinstance(node, ml_collections.ConfigDict):
      return (f"config.{'.'.join(walked)} is a {type(node).__name__} field, not a group; "
              f"allowed: {_allowed(walked)}")
    if key not in node:
      return f"config.{'.'.join(walked + [key])}: unknown field; allowed: {', '.join(node.keys())}"
    node = node[key]
    walked.append(key)
  if isinstance(node, ml_collections.ConfigDict):
    return f"config.{path} is a group; allowed: one of its fields, {', '.join(node.keys())}"
  if isinstance(node, bool):
    if negated or not eq:
      return None
    parse = flags.BooleanParser().parse
  elif isinstance(node, (int, float)):
    parse = type(node)
  else:
    return None  # Strings take any text; other types are ml_collections' to parse.
  if negated or not eq:
    return f"config.{path} needs a value; allowed: --config.{path}=<{_allowed(walked)}>"
  try:
    parse(value)
  except ValueError as e:
    return (f"config.{path}={value!r} cannot be parsed ({_last_line(str(e))}); "
            f"allowed: {_allowed(walked)}")
  return None


def _allowed(walked: Sequence[str]) -> str:
  return config_check.describe(".".join(walked)) or "a value"


def _one_config_flag(argv: list[str]) -> list[str]:
  """Expands --flagfile and keeps one --config=, the last value at the first position.

  ml_collections defines the override flags each time --config is parsed, so a second
  --config (a flags file, then a command-line choice) would fail as a duplicate flag.
  """
  args = flags.FLAGS.read_flags_from_files(list(argv[1:]), force_gnu=False)
  positions = [i for i, arg in enumerate(args) if re.match(r"^--?config=", arg)]
  if len(positions) < 2:
    return argv
  first, last = positions[0], positions[-1]
  kept = [arg for i, arg in enumerate(args) if i not in positions or i == first]
  kept[first] = args[last]
  return [argv[0]] + kept


def parse_flags(argv: list[str]) -> list[str]:
  """absl flags parser for `app.run`: one line and exit status 2 on any flag mistake.

  Args:
    argv: the full command line, program name first.

  Returns:
    The positional arguments left after parsing.
  """
  _precheck(argv)
  try:
    rest = flags.FLAGS(_one_config_flag(argv))
  except flags.Error as e:  # An unknown process flag, or a value absl itself rejects.
    _fail(_last_line(str(e)).replace("ERROR:: ", ""))
  except OSError:  # An override was applied to a config file that failed to load.
    _fail_config_load(_config_argument(argv[1:]) or "")
  except ValueError as e:  # ml_collections: an override it cannot parse.
    _fail(_last_line(str(e)))
  for name in ("config", "workdir"):
    if flags.FLAGS[name].value is None:
      _fail(f"--{name} is required; allowed: {_ALLOWED[name]}")
  return rest


# --config.<path>[=value] and --noconfig.<path>: dotted Python identifiers.
_OVERRIDE = re.compile(r"^--?(?:no)?config\.[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*(?:=.*)?$",
                       re.DOTALL)


def _precheck(argv: Sequence[str]) -> None:
  """Fails with one line on a malformed --config.* override or a config file that does not
  build (it raises, or has no `get_config`), before absl and ml_collections parse them."""
  try:
    args = flags.FLAGS.read_flags_from_files(list(argv[1:]), force_gnu=False)
  except flags.Error as e:  # A missing or unreadable --flagfile.
    _fail(_last_line(str(e)).replace("ERROR:: ", ""))
  for arg in args:
    if re.match(r"^--?(?:no)?config\.", arg) and not _OVERRIDE.match(arg):
      _fail(f"malformed override {arg!r}; allowed: --config.<group>.<field>=value")
  argument = _config_argument(argv[1:])
  if argument is None:
    return
  path = argument.split(":", 1)[0]
  if not os.path.isfile(path):
    _fail_config_load(argument)
  try:
    config = config_check.load_config_file(argument)
  except ValueError as e:
    _fail(_last_line(str(e)) if str(e).startswith("--config=") else
          f"--config={argument}: ValueError: {_last_line(str(e))}")
  except Exception as e:  # pylint: disable=broad-except
    _fail(f"--config={argument}: the config file raised {type(e).__name__}: "
          f"{_last_line(str(e))}")
  if not isinstance(config, ml_collections.ConfigDict):
    _fail(f"--config={argument}: get_config returned a {type(config).__name__}; allowed: an "
          "ml_collections.ConfigDict")
  for arg in args:
    problem = _OVERRIDE.match(arg) and _override_problem(config, arg)
    if problem:
      _fail(problem)


def _fail_config_load(argument: str) -> NoReturn:
  path = argument.split(":", 1)[0]
  why = "no such file" if not os.path.isfile(path) else "it did not load"
  _fail(f"--config={argument}: cannot load the config file ({why}); "
        f"allowed: {_ALLOWED['config']}")


def _loaded_config() -> ml_collections.ConfigDict:
  config = _CONFIG.value
  if not isinstance(config, ml_collections.ConfigDict):
    # ml_collections defers a config file's load error until the config is first used.
    _fail_config_load(config_flags.get_config_filename(flags.FLAGS["config"]))
  return config


def _make_workdir(workdir: str) -> None:
  if "://" in workdir:  # Remote storage (gs://...): orbax and the writers create it.
    return
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    _fail(f"--workdir={workdir}: cannot create it ({e.strerror}); "
          f"allowed: {_ALLOWED['workdir']}")


def _env_int(name: str) -> Optional[int]:
  value = os.environ.get(name)
  if value is None:
    return None
  try:
    return int(value)
  except ValueError:
    _fail(f"${name}={value!r} is not an integer; allowed: an integer")


def _distributed_settings() -> Optional[tuple[Optional[str], Optional[int], Optional[int]]]:
  """(coordinator address, process count, process id) from flags or env, checked; None when
  the run is a single process."""
  address = _COORDINATOR_ADDRESS.value or os.environ.get("JAX_COORDINATOR_ADDRESS")
  count = _NUM_PROCESSES.value if _NUM_PROCESSES.value is not None else _env_int(
      "JAX_NUM_PROCESSES")
  pid = _PROCESS_ID.value if _PROCESS_ID.value is not None else _env_int("JAX_PROCESS_ID")
  if address is None and count is None:
    return None
  if count is not None and count < 1:
    _fail(f"--num_processes={count} is out of range; allowed: an integer >= 1")
  if pid is not None and not 0 <= pid < (count or pid + 1):
    _fail(f"--process_id={pid} is out of range; allowed: 0 .. {(count or 1) - 1}")
  if address is not None and not re.match(r"^\S+:\d+$", address):
    _fail(f"--coordinator_address={address!r} is malformed; allowed: HOST:PORT")
  return address, count, pid


def _init_distributed(settings) -> None:
  """Joins a multi-process run (`jax.distributed.initialize`) given `_distributed_settings()`.

  Must run before anything touches a JAX backend. CPU collectives across processes use gloo.
  """
  if settings is None:
    return
  import jax  # pylint: disable=g-import-not-at-top

  address, count, pid = settings
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=address, num_processes=count,
                             process_id=pid)
  if jax.process_index() != 0:  # Only process 0 writes logs.
    logging.set_verbosity(logging.WARNING)
  logging.info("process %d of %d", jax.process_index(), jax.process_count())


class _DropLibraryInfo(std_logging.Filter):
  """Drops INFO records from chatty libraries (orbax logs every step of every save)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def _write_config(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes the resolved config to `<workdir>/config.json` (process 0); returns the path."""
  import jax  # pylint: disable=g-import-not-at-top

  path = os.path.join(workdir, CONFIG_FILE)
  if jax.process_index() == 0 and "://" not in workdir:
    with open(path, "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
  return path


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments {' '.join(argv[1:])!r}; allowed: --flags only")
  if not flags.FLAGS["verbosity"].present:  # absl INFO (JAX's backend probes, ...) is opt-in.
    logging.set_verbosity(logging.WARNING)
  distributed = _distributed_settings()  # Bad process flags fail before the config loads.
  config = _loaded_config()
  if config.env.import_tasks:  # Before the check, which needs the tasks they register.
    from dvla_jax.envs import custom  # pylint: disable=g-import-not-at-top

    try:
      custom.import_tasks(config.env.import_tasks)
    except (custom.ImportTasksError, custom.TaskDefinitionError) as e:
      _fail(str(e))
    # Saved absolute in config.json, so `dvla_jax.evaluate` finds the files from anywhere.
    config.env.import_tasks = custom.absolute_spec(config.env.import_tasks)
  try:
    config_check.validate(config, known_tasks=config_check.registered_tasks,
                          known_presets=config_check.model_presets)
  except config_check.ConfigError as e:
    _fail(str(e))
  if config.train.wandb_project and not config_check.installed("wandb"):
    _fail(f"train.wandb_project={config.train.wandb_project!r} needs the optional wandb "
          "package; allowed: pip install wandb, or train.wandb_project=''")
  _make_workdir(_WORKDIR.value)
  logging.get_absl_handler().addFilter(_DropLibraryInfo())
  _init_distributed(distributed)

  # Imported here so that --help and config errors do not wait for JAX and MJX.
  from dvla_jax.training import checkpoints  # pylint: disable=g-import-not-at-top
  from dvla_jax.training import console  # pylint: disable=g-import-not-at-top
  from dvla_jax.training import trainer  # pylint: disable=g-import-not-at-top

  try:  # Before anything is written to a workdir that another model's run owns.
    checkpoints.check_workdir(config, _WORKDIR.value)
  except config_check.ConfigError as e:
    _fail(str(e))
  trainer.init_backends(config)
  config_path = _write_config(config, _WORKDIR.value)
  logging.info("workdir %s, config:\n%s", _WORKDIR.value, config)
  console.line(f"{trainer.summary(config)} | workdir {_WORKDIR.value} | config {config_path}")
  try:
    if config.mode == "sft":  # Behaviour cloning; RL starts from it with rl.init_from.
      from dvla_jax.training import sft  # pylint: disable=g-import-not-at-top
      final = sft.train(config, _WORKDIR.value)
    else:
      final = trainer.train(config, _WORKDIR.value)
  except config_check.ConfigError as e:  # A placement the devices present cannot hold.
    _fail(str(e))
  except BaseException:
    if distributed is not None:
      _abandon_run()
    raise
  logging.info("final metrics: %s", final)


def _abandon_run() -> None:
  """Exits a failed process of a multi-process run at once, status 1.

  A normal exit would wait at `jax.distributed`'s shutdown barrier for peers that may
  themselves be waiting in a collective for this process: both would hang. Exiting at once
  closes this process's connections: a peer fails at its next collective with it (or, at
  the latest, when the coordination service misses this process's heartbeats).
  """
  import jax  # pylint: disable=g-import-not-at-top

  logging.exception("process %d failed; leaving the run (the other processes fail at their "
                    "next collective with this one)", jax.process_index())
  std_logging.shutdown()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(1)  # pylint: disable=protected-access


def run() -> None:
  """Entry point: `python -m dvla_jax.main`."""
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
