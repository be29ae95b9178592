"""Evaluation of a trained run: `python -m dvla_jax.evaluate --workdir=... --suite=goal`.

Per-task success rates with 95% Wilson intervals (a table and JSON) and videos of a few
episodes. The package import stays light (no JAX) so that the command answers `--help` and
bad input quickly; import the heavy parts directly:

    from dvla_jax.evaluate import workdir
    result = workdir.evaluate_workdir("runs/demo", tasks=["touch_cube"], episodes=32)
"""

from dvla_jax.evaluate.report import overall
from dvla_jax.evaluate.report import task_summary
from dvla_jax.evaluate.report import wilson_interval

__all__ = [
    "overall",
    "task_summary",
    "wilson_interval",
]
