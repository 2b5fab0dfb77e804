"""`taxctl completion bash|zsh|tcsh`: a shell completion script, generated from the parser.

shtab walks the same argparse tree `taxctl` parses with, so the completion cannot drift from
the commands and flags. Install, e.g.:
`taxctl completion bash > /etc/bash_completion.d/taxctl`.
"""

from __future__ import annotations

import argparse
import sys

SHELLS = ("bash", "zsh", "tcsh")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("completion", help="print a shell completion script")
    p.add_argument("shell", choices=SHELLS, help="the shell to complete for")
    p.set_defaults(func=cmd_completion)


def cmd_completion(args: argparse.Namespace) -> int:
    import shtab

    from taxctl.cli import build_parser  # here, not at import: cli.py imports this module

    sys.stdout.write(shtab.complete(build_parser(), shell=args.shell))
    return 0
