"""File descriptors: raise the soft limit, keep a reserve, size the POS API's cap from the rest.

Serial ports (a pyserial port holds its fd and two pipes), SQLite (the
database, its WAL and shared-memory files), the cursor file and the chain's
HTTP connections all need descriptors while the POS API may be flooded. The
cap on API connections is whatever the soft limit leaves after what is open
at start and that reserve, so a flood can never take the descriptor a
printer's reopen needs.
"""

from __future__ import annotations

import logging
import os
import resource
from dataclasses import dataclass

log = logging.getLogger("taxctl.syncd")

PER_DEVICE = 8  # a serial port and its pyserial pipes, with room for a reopen's overlap
MIN_CONNECTIONS = 4  # below this the API is of no use; run anyway, and say why


@dataclass(frozen=True)
class FdBudget:
    soft_limit: int
    in_use: int
    reserve: int
    max_connections: int

    def describe(self) -> dict[str, int]:
        return dict(self.__dict__)


def raise_soft_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit (systemd's LimitNOFILE=); returns
    the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
    return int(soft) if soft != resource.RLIM_INFINITY else 1 << 20


def open_fds() -> int:
    """Descriptors open in this process now."""
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(directory)) - 1  # less the one listdir itself used
        except OSError:
            continue
    return 0


def plan(
    soft_limit: int, in_use: int, reserve: int, devices: int, wanted: int, overshoot: int
) -> FdBudget:
    """The connection cap that leaves `reserve` plus room for each device untouched, with
    `overshoot` descriptors for connections being closed or refused."""
    kept = reserve + PER_DEVICE * devices
    room = soft_limit - in_use - kept - overshoot
    cap = min(wanted, room)
    if cap < MIN_CONNECTIONS:
        log.error(
            "the open-file limit (%d, %d in use) leaves room for %d POS connections after "
            "keeping %d for devices and storage; raise LimitNOFILE= or lower api.fd_reserve",
            soft_limit,
            in_use,
            max(room, 0),
            kept,
        )
        cap = MIN_CONNECTIONS
    return FdBudget(soft_limit, in_use, kept, cap)
