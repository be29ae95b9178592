"""Trainer wiring, step functions, checkpoints, metrics and evaluation.

Import submodules directly (`from dvla_jax.training import trainer`); this package keeps its
import light so that `main` can validate a config before JAX and MJX load.
"""
