"""The run configuration: every field's default and documentation (`default_config`) and its
allowed values and cross-field rules (`config_check`).

The bottom layer beside envs, models, rl, parallel and memory: it imports none of the
orchestration layers (the task and preset names it checks are looked up at call time).
Import submodules directly (`from dvla_jax.config import config_check`); this package keeps
its import light so that `main` can validate a config before JAX and MJX load.
"""
