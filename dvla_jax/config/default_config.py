"""The full configuration tree with defaults; config files start from `get_config()`.

Every field is declared once, in `dvla_jax/config/fields.py`: its default, the values it
allows and its doc. `dvla_jax.config.config_check` checks a config against those declarations
(and the named validators that relate several fields); `main` runs it before anything is
compiled. The reference below is generated from the declarations; so is `docs/config.md`
(`python -m dvla_jax.config --markdown`).

Fields (path = default (allowed): doc):

"""

import ml_collections

from dvla_jax.config import fields

__doc__ += fields.reference()  # pylint: disable=redefined-builtin


def get_config() -> ml_collections.ConfigDict:
  """Every field at its default (`fields.FIELDS`)."""
  return fields.defaults()
