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
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

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
    """Everything one transaction writes."""

    documents: list[DocumentRow] = field(default_factory=list)
    segment_next: dict[int, int] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    request_marks: dict[int, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.documents or self.segment_next or self.meta)


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


# Several rows per INSERT: sqlite3 releases and re-takes the GIL around every
# statement step, and with executemany that is once per row. Each re-take
# waits for the event loop thread, which is signing the next group, so a
# group's commit cost the signer one GIL hand-over per document.
ROWS_PER_INSERT = 64
_ROW_PLACEHOLDERS = "(" + ",".join("?" * len(_COLUMNS.split(","))) + ")"


@functools.cache
def _insert_documents(rows: int) -> str:
    return f"INSERT INTO documents ({_COLUMNS}) VALUES " + ",".join([_ROW_PLACEHOLDERS] * rows)


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
        self._write = _connect(self.path)
        self._write.execute("PRAGMA journal_mode = WAL")
        self._write.execute("PRAGMA synchronous = FULL")
        self._write.executescript(SCHEMA)
        if max_page_count is not None:
            self._write.execute(f"PRAGMA max_page_count = {int(max_page_count)}")
        self._read = _connect(self.path)
        self._write_lock = threading.Lock()

    def close(self) -> None:
        self._read.close()
        self._write.close()

    # --- writing ---------------------------------------------------------------------

    def commit(self, batch: Batch) -> None:
        """Write a batch atomically and durably; raises StorageFull/JournalError."""
        with self._write_lock:
            conn = self._write
            try:
                conn.execute("BEGIN IMMEDIATE")
                docs = batch.documents
                for start in range(0, len(docs), ROWS_PER_INSERT):
                    chunk = docs[start : start + ROWS_PER_INSERT]
                    conn.execute(
                        _insert_documents(len(chunk)),
                        [value for row in chunk for value in row.values()],
                    )
                if batch.request_marks:
                    conn.executemany(
                        "INSERT INTO request_marks (prefix, high) VALUES (?, ?) "
                        "ON CONFLICT(prefix) DO UPDATE SET high = max(high, excluded.high)",
                        list(batch.request_marks.items()),
                    )
                for segment_id, nxt in batch.segment_next.items():
                    conn.execute("UPDATE segments SET next = ? WHERE id = ?", (nxt, segment_id))
                for key, value in batch.meta.items():
                    conn.execute(
                        "INSERT INTO meta (key, value) VALUES (?, ?) "
                        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        (key, codec.encode(value)),
                    )
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if _is_full(exc):
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
                if _is_full(exc):
                    raise StorageFull(str(exc)) from exc
                raise JournalError(str(exc)) from exc
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
