"""POS idempotency keys: one key, one device request id, durably, before anything is sent.

The device gives the same response to a retransmission with the same
request id, command and body (and keeps that for issuing commands in its
journal, across restarts). So if syncd stores `key -> (device, request id,
command, body)` before it sends the request, a POS retry with the same key
— after a lost response, a link failure, even a syncd restart — is sent
with the same request id and gets the same invoice back, never a second one.

A key reused for a different request (other route, device or body) is
refused. Requests without a key get one generated, returned to the POS in
the `Idempotency-Key` response header so that it can retry safely too.

Storage: SQLite in the state directory, WAL, synchronous=FULL: the row is
on disk before the request goes to the device.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device.privatefile import narrow, private_file
from device.protocol import codec, untrusted

DB_FILE = "idempotency.sqlite"
MAX_KEY_LENGTH = 200
DEFAULT_RETENTION = 30 * 86400.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    key TEXT PRIMARY KEY,
    route TEXT NOT NULL,
    device_id TEXT NOT NULL,
    request_id INTEGER NOT NULL,
    command INTEGER NOT NULL,
    body BLOB NOT NULL,
    digest BLOB NOT NULL,
    created REAL NOT NULL,
    counter INTEGER
);
CREATE INDEX IF NOT EXISTS requests_created ON requests(created);
"""


class KeyReused(ValueError):
    """The key was first used for a different request."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"idempotency key {untrusted.shown(key)} was used for {reason}")


class BadKey(ValueError):
    pass


@dataclass(frozen=True)
class Claim:
    key: str
    device_id: str
    request_id: int
    command: int
    body: dict[str, Any]
    fresh: bool  # True: stored now; False: a retry of an earlier request
    counter: int | None = None


def check_key(key: str) -> str:
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not key.isprintable():
        raise BadKey(f"an idempotency key is 1 to {MAX_KEY_LENGTH} printable characters")
    return key


def new_key() -> str:
    return f"syncd-{uuid.uuid4()}"


def _signed(value: int) -> int:
    """SQLite integers are signed 64-bit; request ids use all 64 bits."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _unsigned(value: int) -> int:
    return value + (1 << 64) if value < 0 else value


def digest(route: str, body: dict[str, Any]) -> tuple[bytes, bytes]:
    encoded = codec.encode(body)
    return encoded, hashlib.sha256(route.encode() + b"\0" + encoded).digest()


log = logging.getLogger("taxctl.syncd")


@dataclass(frozen=True)
class ClaimRequest:
    key: str
    route: str
    device_id: str
    command: int
    body: dict[str, Any]
    request_id: int
    device_chosen: bool = True


def _claim_row(conn: sqlite3.Connection, asked: ClaimRequest) -> tuple[Any, ...] | None:
    """Inside a transaction: the row stored before under the key, or None after storing it."""
    row = conn.execute(
        "SELECT route, device_id, request_id, command, body, digest, counter "
        "FROM requests WHERE key = ?",
        (asked.key,),
    ).fetchone()
    if row is not None:
        return tuple(row)
    encoded, dig = digest(asked.route, asked.body)
    conn.execute(
        "INSERT INTO requests (key, route, device_id, request_id, command, body, "
        "digest, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            asked.key,
            asked.route,
            asked.device_id,
            _signed(asked.request_id),
            asked.command,
            encoded,
            dig,
            time.time(),
        ),
    )
    return None


def _answer(asked: ClaimRequest, row: tuple[Any, ...] | None) -> Claim | KeyReused:
    a = asked
    if row is None:
        return Claim(a.key, a.device_id, a.request_id, a.command, a.body, True)
    old_route, old_device, old_rid, old_command, old_body, old_digest, counter = row
    if old_route != a.route:
        return KeyReused(a.key, f"another operation ({old_route})")
    if old_digest != digest(a.route, a.body)[1]:
        return KeyReused(a.key, "a request with a different body")
    if a.device_chosen and old_device != a.device_id:
        return KeyReused(a.key, f"a request to another device ({old_device})")
    return Claim(
        a.key, old_device, _unsigned(old_rid), old_command, codec.decode(old_body), False, counter
    )


class ClaimGroup:
    """Claims asked for while one batch commits wait for the next, which carries them all
    in one transaction: with 16 tills selling, 16 claims share one fsync instead of each
    waiting for its own (the printer does the same with its journal)."""

    def __init__(self, store: IdempotencyStore) -> None:
        self.store = store
        self._waiting: list[tuple[ClaimRequest, asyncio.Future[Claim | KeyReused]]] = []
        self._completes: list[tuple[str, int]] = []
        self._running = False
        self._task: asyncio.Task[None] | None = None

    async def claim(self, asked: ClaimRequest) -> Claim:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Claim | KeyReused] = loop.create_future()
        self._waiting.append((asked, answer))
        self._start()
        result = await answer
        if isinstance(result, KeyReused):
            raise result
        return result

    def complete(self, key: str, counter: int) -> None:
        """Note the document that answered a key, with the next batch (not waited for: the
        note is for status and support, not for replay; see IdempotencyStore.complete)."""
        self._completes.append((key, counter))
        self._start()

    def _start(self) -> None:
        if not self._running:
            self._running = True
            self._task = asyncio.get_running_loop().create_task(self._commit_all())

    async def _commit_all(self) -> None:
        try:
            while self._waiting or self._completes:
                batch, self._waiting = self._waiting, []
                notes, self._completes = self._completes, []
                try:
                    results = await asyncio.to_thread(
                        self.store.claim_many, [asked for asked, _ in batch], notes
                    )
                except Exception as exc:  # every claim of the batch failed: each says so
                    if not batch:
                        log.error("could not note %d documents' counters: %s", len(notes), exc)
                    for _, answer in batch:
                        if not answer.done():
                            answer.set_exception(exc)
                    continue
                for (_, answer), result in zip(batch, results, strict=True):
                    if not answer.done():
                        answer.set_result(result)
        finally:
            self._running = False


class IdempotencyStore:
    def __init__(self, state: Path, *, retention: float = DEFAULT_RETENTION) -> None:
        state.mkdir(parents=True, exist_ok=True)
        self.path = state / DB_FILE
        # made 0600 before SQLite opens it: its -wal and -shm files copy that mode
        private_file(self.path)
        for suffix in ("-wal", "-shm"):
            narrow(self.path.with_name(DB_FILE + suffix))
        self.retention = retention
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = FULL")
        self._conn.executescript(SCHEMA)
        self.group = ClaimGroup(self)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def find(self, key: str) -> Claim | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT device_id, request_id, command, body, counter FROM requests WHERE key = ?",
                (key,),
            ).fetchone()
        if row is None:
            return None
        return Claim(key, row[0], _unsigned(row[1]), row[2], codec.decode(row[3]), False, row[4])

    def claim(
        self,
        key: str,
        *,
        route: str,
        device_id: str,
        command: int,
        body: dict[str, Any],
        request_id: int,
        device_chosen: bool = True,
    ) -> Claim:
        """Store the mapping (durably) or return the one stored before.

        `device_chosen` is False when the POS did not name a device: a
        retry then goes to the device of the first attempt.
        """
        asked = ClaimRequest(key, route, device_id, command, body, request_id, device_chosen)
        (result,) = self.claim_many([asked])
        if isinstance(result, KeyReused):
            raise result
        return result

    def claim_many(
        self, requests: list[ClaimRequest], completes: Sequence[tuple[str, int]] = ()
    ) -> list[Claim | KeyReused]:
        """Several claims in one durable transaction: one fsync for all (group commit).
        Each answer is what `claim` alone would have given, in order; a key claimed twice
        in the batch is a retry of the first. `completes` (key, counter) notes go first,
        in the same transaction (fsynced only if a claim is in it, as in `complete`)."""
        with self._lock:
            conn = self._conn
            if not requests:
                conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                for key, counter in completes:
                    conn.execute("UPDATE requests SET counter = ? WHERE key = ?", (counter, key))
                rows = [_claim_row(conn, asked) for asked in requests]
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            finally:
                if not requests:
                    conn.execute("PRAGMA synchronous = FULL")
        return [_answer(asked, row) for asked, row in zip(requests, rows, strict=True)]

    def complete(self, key: str, counter: int) -> None:
        """Note which document answered the key (for status and support; not needed for replay)."""
        with self._lock:
            # Not fsynced on its own (it is not needed for replay): the WAL frame becomes
            # durable with the next claim's commit, which fsyncs the log up to it.
            self._conn.execute("PRAGMA synchronous = NORMAL")
            try:
                self._conn.execute("UPDATE requests SET counter = ? WHERE key = ?", (counter, key))
            finally:
                self._conn.execute("PRAGMA synchronous = FULL")

    def release(self, key: str, request_id: int) -> None:
        """Forget a key whose request was refused (nothing issued), so that a retry is a new
        attempt with a new request id. Only if it still maps to that request id."""
        with self._lock:
            self._conn.execute(
                "DELETE FROM requests WHERE key = ? AND request_id = ? AND counter IS NULL",
                (key, _signed(request_id)),
            )

    def purge(self, now: float | None = None) -> int:
        """Forget keys older than the retention period; returns how many."""
        cutoff = (time.time() if now is None else now) - self.retention
        with self._lock:
            cur = self._conn.execute("DELETE FROM requests WHERE created < ?", (cutoff,))
            return cur.rowcount

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM requests").fetchone()[0])
