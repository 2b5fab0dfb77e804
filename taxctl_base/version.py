"""The one version string, and the `--version` flag that prints it."""

from __future__ import annotations

import argparse

__version__ = "0.1.0"


def add_version(parser: argparse.ArgumentParser) -> None:
    """`--version`, the same line on every command that has it."""
    parser.add_argument("--version", action="version", version=f"taxctl {__version__}")
