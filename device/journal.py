"""The device journal: every signed document, durably, in SQLite.

WAL mode with synchronous=FULL: a commit returns only after the WAL is
fsynced, and the device answers an issuing request only after its commit.
Documents are written in batches (group commit), each batch one
transaction together with the request records that make retransmissions
exactly-once and the counters they move.

One connection writes (from one worker thread at a time, so the event loop
keeps reading the port during an fsync); another reads from the loop
thread. WAL lets the reader see the last committed state while a write is
in progress.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

from device.privatefile import narrow, private_file
from device.protocol import codec

JOURNAL_FILE = "journal.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    counter INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    code TEXT,
    number TEXT,
    issued_at INTEGER NOT NULL,
    total INTEGER NOT NULL,
    hash BLOB NOT NULL,
    doc BLOB NOT NULL,
    request_id INTEGER,
    request_digest BLOB,
    refers_code TEXT,
    refers_number TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS documents_number ON documents(code, number)
    WHERE code IS NOT NULL;
CREATE INDEX IF NOT EXISTS documents_request ON documents(request_id)
    WHERE request_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS documents_refers ON documents(refers_code, refers_number)
    WHERE refers_code IS NOT NULL;
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY,
    code TEXT NOT NULL,
    start INTEGER NOT NULL,
    "end" INTEGER NOT NULL,
    next INTEGER NOT NULL,
    raw BLOB NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS request_marks (
    prefix INTEGER PRIMARY KEY,
    high INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
-- Documents are written through this view. Its trigger makes every other change
-- a document brings (the request mark, the segment cursor, the period totals)
-- inside the same statement, so a batch that fits one INSERT commits in one
-- statement step (see Journal.commit).
CREATE VIEW IF NOT EXISTS document_writes AS
    SELECT counter, kind, code, number, issued_at, total, hash, doc, request_id,
        request_digest, refers_code, refers_number, NULL AS period
    FROM documents;
CREATE TRIGGER IF NOT EXISTS document_writes_insert INSTEAD OF INSERT ON document_writes
BEGIN
    INSERT INTO documents (counter, kind, code, number, issued_at, total, hash, doc,
        request_id, request_digest, refers_code, refers_number)
    VALUES (NEW.counter, NEW.kind, NEW.code, NEW.number, NEW.issued_at, NEW.total, NEW.hash,
        NEW.doc, NEW.request_id, NEW.request_digest, NEW.refers_code, NEW.refers_number);
    -- request_id holds a u64 as a signed INTEGER: these give its unsigned halves.
    INSERT INTO request_marks (prefix, high)
        SELECT (NEW.request_id >> 32) & 4294967295, NEW.request_id & 4294967295
        WHERE NEW.request_id IS NOT NULL
        ON CONFLICT(prefix) DO UPDATE SET high = max(high, excluded.high);
    -- Loaded segments never overlap within a code, so this is the number's segment.
    UPDATE segments SET next = max(next, CAST(NEW.number AS INTEGER) + 1)
        WHERE NEW.code IS NOT NULL AND code = NEW.code
            AND CAST(NEW.number AS INTEGER) BETWEEN start AND "end";
    INSERT INTO meta (key, value) SELECT 'period', NEW.period
        WHERE NEW.period IS NOT NULL
        ON CONFLICT(key) DO UPDATE SET value = excluded.value;
END;
"""


class JournalError(RuntimeError):
    """The journal could not be written; the batch was rolled back."""


class StorageFull(JournalError):
    """SQLite reported a full disk (or the page limit); nothing was written."""


@dataclass(slots=True)
class DocumentRow:
    counter: int
    kind: str
    code: str | None
    number: str | None
    issued_at: int
    total: int
    hash: bytes
    doc: bytes
    request_id: int | None = None
    request_digest: bytes | None = None
    refers_code: str | None = None
    refers_number: str | None = None

    def values(self) -> tuple[Any, ...]:
        return (
            self.counter,
            self.kind,
            self.code,
            self.number,
            self.issued_at,
            self.total,
            self.hash,
            self.doc,
            None if self.request_id is None else sql_request_id(self.request_id),
            self.request_digest,
            self.refers_code,
            self.refers_number,
        )


_COLUMNS = (
    "counter, kind, code, number, issued_at, total, hash, doc, request_id, request_digest, "
    "refers_code, refers_number"
)


@dataclass
class Batch:
    """Everything one transaction writes.

    Writing a document also raises its request mark and its segment's cursor
    (the insert trigger does it); `period` is the running period after the
    batch's documents, stored as meta "period".
    """

    documents: list[DocumentRow] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    period: dict[str, Any] | None = None

    def __bool__(self) -> bool:
        return bool(self.documents or self.meta or self.period is not None)


@dataclass(frozen=True, slots=True)
class SegmentRow:
    id: int
    code: str
    start: int
    end: int
    next: int
    raw: bytes

    @property
    def left(self) -> int:
        return self.end - self.next + 1


# Several rows per INSERT, and a batch of up to this many documents in one
# statement: sqlite3 releases and re-takes the GIL around every statement
# step, and each re-take waits for the event loop thread, which is signing
# the next group. A commit used to be six steps (BEGIN, documents, request
# marks, segments, meta, COMMIT); measured on a running device, the five
# besides COMMIT's fsync added about as much time again as the fsync.
ROWS_PER_INSERT = 64
_ROW_PLACEHOLDERS = "(" + ",".join("?" * (len(_COLUMNS.split(",")) + 1)) + ")"


@functools.cache
def _upsert_meta(rows: int) -> str:
    """One statement for every meta key a batch writes (ACK_SYNC writes two to five):
    outside BEGIN it commits in one statement step, as a document batch does."""
    return (
        "INSERT INTO meta (key, value) VALUES "
        + ",".join(["(?, ?)"] * rows)
        + " ON CONFLICT(key) DO UPDATE SET value = excluded.value"
    )


@functools.cache
def _insert_documents(rows: int) -> str:
    return f"INSERT INTO document_writes ({_COLUMNS}, period) VALUES " + ",".join(
        [_ROW_PLACEHOLDERS] * rows
    )


def _statements(batch: Batch) -> list[tuple[str, list[Any]]]:
    statements: list[tuple[str, list[Any]]] = []
    docs = batch.documents
    for start in range(0, len(docs), ROWS_PER_INSERT):
        chunk = docs[start : start + ROWS_PER_INSERT]
        values: list[Any] = []
        for row in chunk:
            values += row.values()
            values.append(None)  # period
        statements.append((_insert_documents(len(chunk)), values))
    meta = [(key, codec.encode(value)) for key, value in batch.meta.items()]
    if batch.period is not None:
        period = codec.encode(batch.period)
        if statements:
            statements[-1][1][-1] = period  # the last document carries it
        else:
            meta.insert(0, ("period", period))
    if meta:
        # Rows apply in order: a key given twice ends with its later value, as before.
        statements.append((_upsert_meta(len(meta)), [v for row in meta for v in row]))
    return statements


def sql_request_id(request_id: int) -> int:
    """A u64 request id as SQLite's signed 64-bit INTEGER (same bits)."""
    return request_id - (1 << 64) if request_id >= 1 << 63 else request_id


def _row(values: tuple[Any, ...]) -> DocumentRow:
    """A stored row, with the request id back in u64 form."""
    row = DocumentRow(*values)
    if row.request_id is not None and row.request_id < 0:
        return replace(row, request_id=row.request_id + (1 << 64))
    return row


def _connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


def _is_full(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_FULL or "full" in str(exc).lower()


class Journal:
    def __init__(self, state: Path, *, max_page_count: int | None = None) -> None:
        self.path = state / JOURNAL_FILE
        # made 0600 before SQLite opens it: its -wal and -shm files copy that mode
        private_file(self.path)
        for suffix in ("-wal", "-shm"):
            narrow(self.path.with_name(JOURNAL_FILE + suffix))
        self._write = _connect(self.path)
        self._write.execute("PRAGMA journal_mode = WAL")
        self._write.execute("PRAGMA synchronous = FULL")
        self._write.executescript(SCHEMA)
        if max_page_count is not None:
            self._write.execute(f"PRAGMA max_page_count = {int(max_page_count)}")
        self._read = _connect(self.path)
        self._write_lock = threading.Lock()
        # the last write found the disk (or the page limit) full: the next one will most
        # likely be refused too, so STATUS says STORAGE_FULL until a write succeeds
        self.full = False
        # An emulation knob (`device run --storage-latency`), not a device feature: seconds
        # added to every commit, as a write to slow write-once fiscal memory would take.
        self.storage_latency = 0.0

    def close(self) -> None:
        self._read.close()
        self._write.close()

    # --- writing ---------------------------------------------------------------------

    def commit(self, batch: Batch) -> None:
        """Write a batch atomically and durably; raises StorageFull/JournalError."""
        statements = _statements(batch)
        with self._write_lock:
            conn = self._write
            try:
                if len(statements) == 1:
                    # Outside BEGIN a statement is its own transaction: inserting,
                    # moving the marks and the cursor, and the fsync'd commit are one step.
                    conn.execute(*statements[0])
                else:
                    conn.execute("BEGIN IMMEDIATE")
                    for sql, params in statements:
                        conn.execute(sql, params)
                    conn.execute("COMMIT")
                if self.storage_latency > 0:
                    time.sleep(self.storage_latency)  # the journal thread's; the loop runs on
                self.full = False
            except BaseException as exc:
                # Whatever stopped it (a value sqlite cannot bind raises OverflowError, not
                # sqlite3.Error), an open transaction must not stay open for the next batch
                # to commit together with this one's first half.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if not isinstance(exc, sqlite3.Error):
                    raise
                self._raise(exc)

    def _raise(self, exc: sqlite3.Error) -> NoReturn:
        if _is_full(exc):
            self.full = True
            raise StorageFull(str(exc)) from exc
        raise JournalError(str(exc)) from exc

    def set_meta(self, key: str, value: Any) -> None:
        self.commit(Batch(meta={key: value}))

    def add_segment(self, code: str, start: int, end: int, raw: bytes) -> SegmentRow:
        with self._write_lock:
            try:
                cur = self._write.execute(
                    'INSERT INTO segments (code, start, "end", next, raw) VALUES (?,?,?,?,?)',
                    (code, start, end, start, raw),
                )
            except sqlite3.Error as exc:
                self._raise(exc)
            self.full = False
            assert cur.lastrowid is not None
            return SegmentRow(cur.lastrowid, code, start, end, start, raw)

    # --- reading ---------------------------------------------------------------------

    def meta(self, key: str, default: Any = None) -> Any:
        row = self._read.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else codec.decode(row[0])

    def request_marks(self) -> dict[int, int]:
        """Per request-id prefix (high 32 bits), the highest low half ever journaled."""
        return dict(self._read.execute("SELECT prefix, high FROM request_marks").fetchall())

    def segments(self) -> list[SegmentRow]:
        rows = self._read.execute(
            'SELECT id, code, start, "end", next, raw FROM segments ORDER BY id'
        ).fetchall()
        return [SegmentRow(*row) for row in rows]

    def last_document(self) -> tuple[int, bytes, int] | None:
        """(counter, hash, issued_at) of the newest document."""
        row = self._read.execute(
            "SELECT counter, hash, issued_at FROM documents ORDER BY counter DESC LIMIT 1"
        ).fetchone()
        return None if row is None else (row[0], row[1], row[2])

    def count(self) -> int:
        return int(self._read.execute("SELECT count(*) FROM documents").fetchone()[0])

    def document(self, counter: int) -> DocumentRow | None:
        row = self._read.execute(
            f"SELECT {_COLUMNS} FROM documents WHERE counter = ?", (counter,)
        ).fetchone()
        return None if row is None else _row(row)

    def document_by_number(self, code: str, number: str) -> DocumentRow | None:
        row = self._read.execute(
            f"SELECT {_COLUMNS} FROM documents WHERE code = ? AND number = ?", (code, number)
        ).fetchone()
        return None if row is None else _row(row)

    def by_request(self, request_id: int) -> DocumentRow | None:
        row = self._read.execute(
            f"SELECT {_COLUMNS} FROM documents WHERE request_id = ? ORDER BY counter DESC LIMIT 1",
            (sql_request_id(request_id),),
        ).fetchone()
        return None if row is None else _row(row)

    def credited(self, code: str, number: str) -> int:
        """Sum of |total| of credit notes already issued against an invoice."""
        row = self._read.execute(
            "SELECT coalesce(sum(-total), 0) FROM documents "
            "WHERE refers_code = ? AND refers_number = ?",
            (code, number),
        ).fetchone()
        return int(row[0])

    def range_totals(self, after: int, through: int | None = None) -> tuple[int, int]:
        """(count, sum of |total| of invoices and credits) with after < counter <= through."""
        # Reports carry day totals, not new money: they do not count toward the amount limit.
        row = self._read.execute(
            "SELECT count(*), coalesce(sum(CASE WHEN kind IN ('invoice', 'credit') "
            "THEN abs(total) ELSE 0 END), 0) FROM documents WHERE counter > ? AND counter <= ?",
            (after, through if through is not None else 2**62),
        ).fetchone()
        return int(row[0]), int(row[1])

    def hash_of(self, counter: int) -> bytes | None:
        row = self._read.execute(
            "SELECT hash FROM documents WHERE counter = ?", (counter,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def issued_at(self, counter: int) -> int | None:
        row = self._read.execute(
            "SELECT issued_at FROM documents WHERE counter = ?", (counter,)
        ).fetchone()
        return None if row is None else int(row[0])

    def documents(
        self, first: int, *, last: int | None = None, max_count: int, max_bytes: int
    ) -> list[tuple[int, bytes]]:
        """Consecutive documents from `first`: at least one if any, within the bounds."""
        out: list[tuple[int, bytes]] = []
        size = 0
        cursor = self._read.execute(
            "SELECT counter, doc FROM documents WHERE counter >= ? AND counter <= ? "
            "ORDER BY counter LIMIT ?",
            (first, last if last is not None else 2**62, max_count),
        )
        for counter, doc in cursor:
            if out and size + len(doc) > max_bytes:
                break
            out.append((counter, doc))
            size += len(doc)
        cursor.close()
        return out


def export(state: Path) -> Iterator[DocumentRow]:
    """Every document in counter order from one consistent snapshot; read-only."""
    path = state / JOURNAL_FILE
    if not path.exists():
        raise JournalError(f"no journal at {path}")
    conn = _connect(path, readonly=True)
    try:
        conn.execute("BEGIN")  # one read transaction: a snapshot even while the device writes
        yield from (
            _row(row) for row in conn.execute(f"SELECT {_COLUMNS} FROM documents ORDER BY counter")
        )
        conn.execute("COMMIT")
    finally:
        conn.close()
