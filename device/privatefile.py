"""Files only their owner reads: state that holds keys, sales or idempotency keys.

A state directory is the owner's (0700), but a file copied out of it, a
backup, or a directory whose mode an operator widened keeps the file's own
mode; so every state file is created 0600 whatever the umask, and an
existing one is narrowed to that when opened. SQLite creates its `-wal`
and `-shm` files with the database file's mode, so a database made private
before its first connection stays private.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

PRIVATE = 0o600


def private_file(path: Path) -> None:
    """Create `path` empty and 0600 if missing; narrow it to 0600 if it is wider."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
            os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) & 0o700)
    finally:
        os.close(fd)


def narrow(path: Path) -> None:
    """Narrow an existing file (SQLite's -wal/-shm, made before this version) to 0600."""
    with contextlib.suppress(FileNotFoundError):
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            os.chmod(path, mode & 0o700)


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` (a temporary file, replaced if a crash left one), 0600,
    fsynced; the caller renames it into place."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE)
    try:
        os.fchmod(fd, PRIVATE)  # a leftover file keeps its old mode through O_CREAT
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
