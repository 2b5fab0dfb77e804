"""The device key: generated once on the device, stored owner-only, never exported.

No command returns the seed; the only way to use it is `sign`. The file is
created with O_EXCL and mode 0600 before any byte is written, and fsynced
with its directory, so a crash during personalisation leaves either no key
or a whole one.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from device.protocol.keys import SEED_SIZE, KeyPair

KEY_FILE = "device.key"


class KeyFileError(RuntimeError):
    """The key file is missing, damaged or readable by others."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_key(state: Path) -> KeyPair:
    key = KeyPair.generate()
    path = state / KEY_FILE
    tmp = state / (KEY_FILE + ".new")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, key.seed)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(state)
    return key


def load_key(state: Path) -> KeyPair:
    path = state / KEY_FILE
    try:
        info = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"no device key at {path}") from None
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise KeyFileError(
            f"{path} is readable by group or others (mode {stat.S_IMODE(info.st_mode):o}); "
            "the device refuses to use a key that may have leaked: chmod 600 it"
        )
    seed = path.read_bytes()
    if len(seed) != SEED_SIZE:
        raise KeyFileError(f"{path} is {len(seed)} bytes, a device key is {SEED_SIZE}")
    return KeyPair.from_seed(seed)


def key_exists(state: Path) -> bool:
    return (state / KEY_FILE).exists()
