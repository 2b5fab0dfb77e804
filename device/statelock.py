"""One device process per state directory.

Two printers on one state would sign documents under the same key with the
same counters and numbers: the second must not start. The lock is an
flock on `STATE/device.lock`. The kernel drops it when its holder exits,
SIGKILL included, so a restarted printer never finds a stale lock; the
file keeps the holder's pid only to name it in the refusal.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from device.settings import SettingsError

LOCK_FILE = "device.lock"


class StateInUse(SettingsError):
    """Another process holds this state directory."""


class StateLock:
    def __init__(self, state: Path) -> None:
        fd = os.open(state / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise StateInUse(
                f"{state} is in use by another device process"
                + (f" (pid {holder})" if holder.isdigit() else "")
                + ": stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the only descriptor drops the flock
