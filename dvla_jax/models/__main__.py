"""Model presets from the command line; parameter counts are abstract (nothing allocated).

  python -m dvla_jax.models --list
  python -m dvla_jax.models --preset 7b --count
"""

import argparse
import sys

from dvla_jax.models.presets import PRESETS
from dvla_jax.models.presets import get_preset
from dvla_jax.models.vla import count_params


def _describe(name: str) -> str:
  c = PRESETS[name]
  vit = f"vit {c.vit_width}x{c.vit_depth}" if c.vit_depth else "patch embed"
  return (f"{name:6s} {count_params(c):>17,} parameters  width {c.width} depth {c.depth} "
          f"heads {c.num_heads} mlp {c.mlp_dim}  {vit}  image {c.image_size}/{c.patch_size}")


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m dvla_jax.models", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", help=f"one of: {', '.join(PRESETS)}")
  parser.add_argument("--count", action="store_true", help="print the preset's parameter count")
  parser.add_argument("--list", action="store_true", help="list the presets with their sizes")
  args = parser.parse_args(argv)
  if args.list:
    for name in PRESETS:
      print(_describe(name))
    return 0
  if args.preset is None:
    parser.print_usage(sys.stderr)
    print("error: give --list, or --preset NAME --count", file=sys.stderr)
    return 2
  try:
    config = get_preset(args.preset)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.count:
    print(f"{args.preset}: {count_params(config):,} parameters")
  else:
    print(config)
  return 0


if __name__ == "__main__":
  sys.exit(main())
