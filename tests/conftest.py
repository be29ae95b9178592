"""Shared pytest set-up: tests run on the CPU backend unless JAX_PLATFORMS says otherwise."""

import os

# Must happen before anything initialises a JAX backend; a test that needs fake devices
# sets `jax_num_cpu_devices` itself (or runs a subprocess).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# The files that take minutes, slowest first. `make test` runs `pytest -n 2 --dist loadfile
# --no-loadscope-reorder`, so files go to the two workers in collection order: starting these
# first keeps a worker from finishing the run alone on one of them. The rest keep pytest's
# order. Seconds per file in a full run on the 2-core machine, for when this list is revisited
# (trainer and pipeline_memory before they were made cheaper): multihost 366, trainer 494,
# pipeline_memory 190, sft 170, readme 120, configs 98, swimlanes/test_pipeline 97,
# notebook 94, offpolicy 68.
_SLOW_FILES = (
    "tests/multihost/test_multihost.py",
    "tests/training/test_trainer.py",
    "tests/memory/test_pipeline_memory.py",
    "tests/training/test_sft.py",
    "tests/training/test_rl_learns.py",
    "tests/test_user_runs.py",
    "tests/test_readme_commands.py",
    "tests/test_configs.py",
    "tests/swimlanes/test_pipeline.py",
    "tests/test_notebook.py",
    "tests/swimlanes/test_offpolicy.py",
)


def pytest_collection_modifyitems(config, items):
  del config
  rank = {path: i for i, path in enumerate(_SLOW_FILES)}
  items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(_SLOW_FILES)))
