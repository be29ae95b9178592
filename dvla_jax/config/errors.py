"""The error every config check raises."""


class ConfigError(ValueError):
  """A config value that is not allowed; `str(error)` is one line naming the field."""

