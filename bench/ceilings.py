"""Raw ceilings measured on this machine, for benchmarks to compare against.

Each is the rate of the bare primitive with nothing of taxctl around it:
Ed25519 signing and verification (PyNaCl, one core), and one-row SQLite
commits in WAL mode with synchronous=FULL on a given filesystem.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
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
