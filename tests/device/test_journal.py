"""The journal's batch commit: many documents, one transaction, all or nothing."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

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
