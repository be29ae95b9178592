"""The placement block of a config, read in one place: plane mesh shapes and explicit ids.

`config_check` validates placements with these (before JAX starts), and
`dvla_jax.parallel.mesh` builds the meshes from them once the devices are known.
"""

from typing import Any, Mapping, Optional

from dvla_jax.config.errors import ConfigError

PLANES = ("sim", "actor", "learner")
MODEL_AXES = ("data", "fsdp", "tensor")


def plane_shape(placement: Mapping[str, Any], plane: str) -> tuple[int, ...]:
  """Mesh shape of `plane` in a `placement` block: (devices,) for sim, (data, fsdp, tensor)
  for actor and learner."""
  block = placement[plane]
  if plane == "sim":
    return (int(block["devices"]),)
  return tuple(int(block[axis]) for axis in MODEL_AXES)


def device_ids(placement: Mapping[str, Any], plane: str) -> Optional[list[int]]:
  """The explicit device ids of `plane` (`placement.<plane>.device_ids`); None when "".

  Raises:
    ConfigError: the text is not distinct non-negative integers separated by commas.
  """
  text = str(placement[plane]["device_ids"])
  if not text.strip():
    return None
  try:
    ids = [int(part) for part in text.split(",")]
  except ValueError:
    ids = [-1]
  if min(ids) < 0 or len(set(ids)) != len(ids):
    raise ConfigError(f"placement.{plane}.device_ids={text!r} is not a list of device ids; "
                      "allowed: distinct non-negative integers separated by commas, or '' "
                      "(automatic)")
  return ids
