"""``python -m jitnn warmup``: compile the built-in kernels ahead of time (see :mod:`jitnn.warmup`)."""

from __future__ import annotations

import argparse
import sys

from jitnn.warmup import warmup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jitnn", description="jitnn's command line.")
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser(
        "warmup",
        help="compile every built-in kernel into Numba's disk cache",
        description="Compile every built-in layer's, loss's and optimizer's kernels into Numba's disk cache "
        "(NUMBA_CACHE_DIR), so that a new model compiles only its own training step.",
    )
    command.add_argument("--dtype", choices=["float32", "float64"], action="append", help="a dtype to compile for (repeatable; default: both)")
    command.add_argument("--quiet", action="store_true", help="print only the summary line")
    arguments = parser.parse_args(argv)
    progress = None if arguments.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    print(warmup(tuple(arguments.dtype or ("float32", "float64")), progress=progress))
    return 0


if __name__ == "__main__":
    sys.exit(main())
