"""The exit codes of every `taxctl` command, defined once.

Scripts depend on these values, so they never change. `taxctl verify` gave
3, 4 and 5 other meanings before this table existed; those are kept and
listed here next to the general meaning rather than renumbered.
"""

from __future__ import annotations

from typing import NamedTuple


class Exit(NamedTuple):
    code: int
    name: str
    meaning: str


OK = 0
REFUSED = 1
USAGE = 2
LINK = 3
STATE = 4
NOT_YET_UPLOADED = 5
PORT_GONE = 6
INTERRUPTED = 130
OUTPUT_CLOSED = 141  # 128 + SIGPIPE, what a shell reports for a command killed by it

# `taxctl verify`'s own names for the shared numbers.
AUTHENTIC, NOT_AUTHENTIC, CLAIMED, NO_ANSWER = OK, REFUSED, LINK, STATE

TABLE = (
    Exit(OK, "OK", "done (verify: authentic, not yet claimed)"),
    Exit(REFUSED, "REFUSED", "the device or the chain refused (verify: not authentic)"),
    Exit(USAGE, "USAGE", "bad arguments, input file or configuration"),
    Exit(
        LINK,
        "LINK",
        "no answer from the device, chain or daemon; an issuing request's outcome is unknown "
        "(verify: authentic but already claimed)",
    ),
    Exit(STATE, "STATE", "the state directory cannot be used (verify: no answer from the chain)"),
    Exit(
        NOT_YET_UPLOADED,
        "NOT_YET_UPLOADED",
        "verify only: signed by a registered printer, not on the chain yet",
    ),
    Exit(
        PORT_GONE,
        "PORT_GONE",
        "the serial port does not exist, or went away while the printer was serving it",
    ),
    Exit(INTERRUPTED, "INTERRUPTED", "interrupted (Ctrl-C)"),
    Exit(
        OUTPUT_CLOSED,
        "OUTPUT_CLOSED",
        "whatever read the output stopped reading (a pager or `head` quit)",
    ),
)


def epilog() -> str:
    """The table as `taxctl --help` shows it."""
    lines = ["exit codes (every command):"]
    lines += [f"  {e.code:>3}  {e.name:<16} {e.meaning}" for e in TABLE]
    return "\n".join(lines)
