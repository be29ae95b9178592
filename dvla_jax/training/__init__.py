"""The trainer and what it owns: the run loop (`trainer`), behaviour cloning (`sft`,
`warmstart`), checkpoints, metrics writers and the console.

Import submodules directly (`from dvla_jax.training import trainer`); this package keeps its
import light so that `main` can validate a config before JAX and MJX load.
"""
