"""What both worker scripts share: their event records and a checksum of weights.

Events go to a file of their own (`$EVENTS_FILE`, one JSON object per line), not to stdout:
lane threads and the trainer's progress lines share stdout, where one thread's output can land
in the middle of another's line.
"""

import json
import os
import threading

import jax
import jax.numpy as jnp

_lock = threading.Lock()


def emit(**record) -> None:
  """Appends `record` as one line (whole, whichever thread calls)."""
  line = json.dumps(record) + "\n"
  with _lock, open(os.environ["EVENTS_FILE"], "a", encoding="utf-8") as f:
    f.write(line)


def checksum(tree) -> float:
  """Sum of the absolute values of every leaf, in float32."""
  return float(sum(jnp.sum(jnp.abs(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))
