"""The run configuration: every field declared once with its default, allowed values and doc
(`fields`), the tree of defaults (`default_config`), and the checks (`config_check`: each
field's rule, then the named cross-field validators).

The bottom layer beside envs, models, rl, parallel and memory: it imports none of the
orchestration layers (the task and preset names it checks are looked up at call time).
Import submodules directly (`from dvla_jax.config import config_check`); this package keeps
its import light so that `main` can validate a config before JAX and MJX load.
"""
