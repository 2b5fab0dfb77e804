"""The `taxctl` console script: one entry point, subcommands owned by each package.

Each package exposes `register(subparsers)` which adds its subcommands and
sets `func` on them; `func(args)` returns the process exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Module paths, not imports: `taxctl device info` should not pay for aiohttp.
COMPONENTS = (
    "device.cli",
    "syncd.cli",
    "hostsim.cli",
    "taxctl.demo",
    "taxctl.verify",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taxctl",
        description="Emulated tax-control printer, host sync daemon and chain simulator.",
    )
    parser.add_argument("--version", action="version", version=_version())
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMPONENTS:
        importlib.import_module(name).register(subparsers)
    return parser


def _version() -> str:
    from taxctl import __version__

    return f"taxctl {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
