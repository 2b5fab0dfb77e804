"""Raw ceilings measured on this machine, for benchmarks to compare against.

Each is the rate of the bare primitive with nothing of taxctl around it:
Ed25519 signing and verification (PyNaCl, one core), and one-row SQLite
commits in WAL mode with synchronous=FULL on a given filesystem.
"""

from __future__ import annotations

import os
import select
import sqlite3
import tempfile
import threading
import time
import tty
from pathlib import Path

from nacl.signing import SigningKey

MESSAGE = os.urandom(600)  # about the size of an invoice's Sig_structure


def _rate(action: object, seconds: float) -> float:
    assert callable(action)
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(100):
            action()
        done += 100
        now = time.perf_counter()
        if now >= deadline:
            return done / (now - start)


def ed25519_sign_rate(seconds: float = 1.0) -> float:
    key = SigningKey.generate()
    return _rate(lambda: key.sign(MESSAGE), seconds)


def ed25519_verify_rate(seconds: float = 1.0) -> float:
    key = SigningKey.generate()
    signed = key.sign(MESSAGE)
    verify = key.verify_key.verify
    return _rate(lambda: verify(signed), seconds)


def fsync_commit_rate(directory: Path | None = None, seconds: float = 1.0) -> float:
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        conn = sqlite3.connect(Path(tmp) / "ceiling.sqlite", isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, doc BLOB)")

        def commit() -> None:
            conn.execute("BEGIN")
            conn.execute("INSERT INTO t (doc) VALUES (?)", (MESSAGE,))
            conn.execute("COMMIT")

        try:
            return _rate(commit, seconds)
        finally:
            conn.close()


def pty_bytes_rate(seconds: float = 1.0) -> float:
    """Bytes per second through a raw pty (the emulator's serial line, unpaced)."""
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    stop = threading.Event()

    def write() -> None:
        chunk = os.urandom(4096)
        while not stop.is_set():
            ready = select.select([], [master], [], 0.1)[1]
            if ready:
                os.write(master, chunk)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    moved = 0
    try:
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            if select.select([slave], [], [], 0.1)[0]:
                moved += len(os.read(slave, 65536))
        return moved / (time.perf_counter() - start)
    finally:
        stop.set()
        writer.join(1)
        os.close(master)
        os.close(slave)
