"""Shared pytest set-up: tests run on the CPU backend unless JAX_PLATFORMS says otherwise."""

import os

# Must happen before anything initialises a JAX backend; a test that needs fake devices
# sets `jax_num_cpu_devices` itself (or runs a subprocess).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
