"""The `taxctl` console script: one entry point, subcommands owned by each package.

Each package exposes `register(subparsers)` which adds its subcommands and
sets `func` on them; `func(args)` returns the process exit code.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from taxctl_base import exits
from taxctl_base.version import add_version

# Module paths, not imports: `taxctl device info` should not pay for aiohttp.
COMPONENTS = (
    "device.cli",
    "syncd.cli",
    "hostsim.cli",
    "taxctl.demo",
    "taxctl.verify",
    "taxctl.completion",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taxctl",
        description="Emulated tax-control printer, host sync daemon and chain simulator.",
        epilog=exits.epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_version(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMPONENTS:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return exits.USAGE
    try:
        code = int(func(args) or 0)
        sys.stdout.flush()  # here, where a closed pipe is caught, not in the exit's flush
        return code
    except KeyboardInterrupt:
        return exits.INTERRUPTED
    except BrokenPipeError:
        # `taxctl ... | head`: the reader is gone. Point stdout at /dev/null so that the
        # interpreter's own flush at exit finds nowhere to fail, instead of a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return exits.OUTPUT_CLOSED


if __name__ == "__main__":
    sys.exit(main())
