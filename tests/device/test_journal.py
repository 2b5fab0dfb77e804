"""The journal's batch commit: many documents, one transaction, all or nothing."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from device.journal import ROWS_PER_INSERT, Batch, DocumentRow, Journal, JournalError


def _row(counter: int, *, number: str | None = None) -> DocumentRow:
    doc = f"document {counter}".encode() * 20
    return DocumentRow(
        counter,
        "invoice",
        "144031900111",
        number or f"{counter:08d}",
        1_790_000_000 + counter,
        100 * counter,
        hashlib.sha256(doc).digest(),
        doc,
        (0xFFFF_FFFF << 32) | counter,  # above 2**63: stored as a signed INTEGER
        bytes(16),
        "144031900111" if counter % 7 == 0 else None,
        "00000001" if counter % 7 == 0 else None,
    )


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    opened = Journal(tmp_path)
    yield opened
    opened.close()


def test_a_batch_larger_than_one_insert_is_stored_whole(journal: Journal) -> None:
    size = 2 * ROWS_PER_INSERT + 5  # three INSERT statements, the last one short
    rows = [_row(counter) for counter in range(1, size + 1)]
    journal.commit(Batch(documents=rows))
    assert journal.count() == size
    assert [journal.document(row.counter) for row in rows] == rows
    assert journal.by_request(rows[-1].request_id or 0) == rows[-1]
    assert journal.last_document() == (size, rows[-1].hash, rows[-1].issued_at)


def test_a_batch_that_fails_in_its_last_insert_writes_nothing(journal: Journal) -> None:
    journal.commit(Batch(documents=[_row(1)]))
    size = 2 * ROWS_PER_INSERT + 5
    rows = [_row(counter) for counter in range(2, size)]
    rows.append(_row(size, number=rows[0].number))  # a number already taken in this batch
    with pytest.raises(JournalError, match="UNIQUE"):
        journal.commit(Batch(documents=rows, meta={"synced_through": 9}))
    assert journal.count() == 1
    assert journal.document(2) is None
    assert journal.meta("synced_through") is None
    journal.commit(Batch(documents=rows[:-1]))  # the journal is still usable
    assert journal.count() == size - 1


def test_a_batch_stopped_by_a_value_sqlite_cannot_bind_writes_nothing(journal: Journal) -> None:
    """OverflowError is not a sqlite3.Error: the transaction it interrupts must not stay
    open, or the next batch would commit this one's first half with it."""
    journal.commit(Batch(documents=[_row(1)]))
    rows = [_row(counter) for counter in range(2, 2 * ROWS_PER_INSERT + 5)]
    rows[-1] = replace(rows[-1], total=2**64)  # in the last INSERT: the first ones ran
    with pytest.raises(OverflowError):
        journal.commit(Batch(documents=rows))
    assert journal.count() == 1
    journal.commit(Batch(meta={"synced_through": 1}))
    assert journal.count() == 1 and journal.meta("synced_through") == 1


CODE = "144031900111"


def _with_segment(journal: Journal) -> None:
    journal.add_segment(CODE, 1, 1000, b"segment")


def _state(journal: Journal) -> tuple[int, dict[int, int], int, object]:
    return (
        journal.count(),
        journal.request_marks(),
        journal.segments()[0].next,
        journal.meta("period"),
    )


class _CountingConnection:
    """The journal's write connection, recording each statement it is given."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.executed: list[str] = []

    def execute(self, sql: str, *params: Any) -> sqlite3.Cursor:
        self.executed.append(sql.split()[0] + (" " + sql.split()[2] if sql[:6] == "INSERT" else ""))
        return self._conn.execute(sql, *params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def test_a_batch_that_fits_one_insert_is_one_statement(journal: Journal) -> None:
    # Each statement step costs the signing thread a GIL hand-over: a batch of
    # documents with its period must be one.
    _with_segment(journal)
    counting = _CountingConnection(journal._write)
    journal._write = counting  # type: ignore[assignment]
    journal.commit(Batch(documents=[_row(c) for c in range(1, 11)], period={"documents": 10}))
    assert counting.executed == ["INSERT document_writes"]
    counting.executed.clear()
    journal.commit(Batch(documents=[_row(11)], meta={"synced_through": 3}))
    assert counting.executed == ["BEGIN", "INSERT document_writes", "INSERT meta", "COMMIT"]
    assert journal.meta("synced_through") == 3 and journal.count() == 11


def test_writing_documents_moves_request_marks_segment_cursor_and_period(
    journal: Journal,
) -> None:
    _with_segment(journal)
    journal.commit(Batch(documents=[_row(c) for c in range(1, 6)], period={"documents": 5}))
    assert _state(journal) == (5, {0xFFFF_FFFF: 5}, 6, {"documents": 5})
    # A later batch only raises them; another request-id prefix gets its own mark.
    other = _row(6)
    other.request_id = (7 << 32) | 2
    journal.commit(Batch(documents=[other, _row(7)], period={"documents": 7}))
    assert _state(journal) == (7, {0xFFFF_FFFF: 7, 7: 2}, 8, {"documents": 7})


def test_a_one_statement_batch_that_fails_changes_nothing(journal: Journal) -> None:
    _with_segment(journal)
    journal.commit(Batch(documents=[_row(c) for c in range(1, 4)], period={"documents": 3}))
    before = _state(journal)
    rows = [_row(c) for c in range(4, 9)]
    rows.append(_row(9, number=rows[0].number))  # a number already taken in this batch
    with pytest.raises(JournalError, match="UNIQUE"):
        journal.commit(Batch(documents=rows, period={"documents": 9}))
    assert _state(journal) == before
    assert not journal._write.in_transaction


def test_a_journal_from_before_the_insert_trigger_gets_it_on_open(tmp_path: Path) -> None:
    old = Journal(tmp_path)
    _with_segment(old)
    old._write.executescript(
        "DROP TRIGGER document_writes_insert; DROP VIEW document_writes;"
    )  # the schema as it was: documents, segments, request_marks, meta
    old.close()
    reopened = Journal(tmp_path)
    try:
        reopened.commit(Batch(documents=[_row(c) for c in range(1, 4)], period={"documents": 3}))
        assert _state(reopened) == (3, {0xFFFF_FFFF: 3}, 4, {"documents": 3})
    finally:
        reopened.close()
