"""Prints the config field reference: `python -m dvla_jax.config [--markdown]`.

`--markdown` prints `docs/config.md` (regenerate it with
`python -m dvla_jax.config --markdown > docs/config.md`).
"""

import sys

from dvla_jax.config import fields


def main(argv: list[str]) -> int:
  if argv not in ([], ["--markdown"]):
    print("usage: python -m dvla_jax.config [--markdown]", file=sys.stderr)
    return 2
  print(fields.markdown() if argv else fields.reference(), end="")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
