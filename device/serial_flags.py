"""The serial line flags shared by every `taxctl device` command, with help and range checks.

A value out of range is refused by argparse (exit 2, the flag named) before any port is opened,
so a typo such as `--baud 12` never reaches pyserial or the pacing arithmetic of the emulator.
"""

from __future__ import annotations

import argparse

from device.protocol.commands import RESPONSE_TIMEOUT
from device.protocol.untrusted import shown

# The same bounds as syncd's `serial.baud` (syncd/config.py): pyserial's lowest standard rate
# and the highest rate common USB adapters (FTDI, CP210x) reach.
BAUD_MIN, BAUD_MAX = 50, 4_000_000
# A response timeout longer than this is a typo (milliseconds given as seconds), not a line.
TIMEOUT_MAX = 600.0


def baud_rate(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {shown(text)}") from None
    if not BAUD_MIN <= value <= BAUD_MAX:
        raise argparse.ArgumentTypeError(
            f"{value} is out of range: a baud rate is {BAUD_MIN} to {BAUD_MAX}"
            " (common: 9600, 19200, 38400, 57600, 115200)"
        )
    return value


def response_timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {shown(text)}") from None
    if not 0 < value <= TIMEOUT_MAX:  # also refuses nan
        raise argparse.ArgumentTypeError(
            f"{shown(text)} is out of range: more than 0 and at most {TIMEOUT_MAX:g} seconds"
        )
    return value


def line_args(p: argparse.ArgumentParser) -> None:
    """--baud, --parity, --stopbits, --rtscts: must match the printer's own settings."""
    p.add_argument(
        "--baud",
        type=baud_rate,
        default=115200,
        metavar="RATE",
        help=f"line speed, {BAUD_MIN}-{BAUD_MAX} bit/s (default 115200)",
    )
    p.add_argument(
        "--parity",
        default="N",
        choices=["N", "E", "O", "M", "S"],
        help="none, even, odd, mark or space (default N)",
    )
    p.add_argument(
        "--stopbits", type=float, default=1, choices=[1, 1.5, 2], help="stop bits (default 1)"
    )
    p.add_argument("--rtscts", action="store_true", help="RTS/CTS hardware flow control")


def port_args(p: argparse.ArgumentParser) -> None:
    """The flags of a command that talks to a printer on a port."""
    p.add_argument("--port", required=True, help="device path, pty symlink or pyserial URL")
    line_args(p)
    p.add_argument(
        "--timeout",
        type=response_timeout,
        default=None,
        metavar="S",
        help=f"seconds to wait for each response (default {RESPONSE_TIMEOUT:g})",
    )
