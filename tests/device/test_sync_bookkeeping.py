"""ACK_SYNC's bookkeeping without journal reads, checked against the journal as oracle.

The backlog after a receipt for the newest committed document, the hash a receipt is
checked against and the consortium an offer installs are now known in memory; each is
compared here with what the journal (or a fresh check) says, on varied histories.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from device.app import open_device
from device.firmware import Firmware
from device.journal import Batch, Journal
from device.limits import Backlog
from device.protocol import trust
from device.protocol.document import Kind
from tests.device.conftest import INVOICE, wide_limits
from tests.helpers import SigningConsortium


def oracle_backlog(fw: Firmware) -> Backlog:
    """The backlog as the journal and the pending documents say it is."""
    count, amount = fw.journal.range_totals(fw.synced_through)
    oldest = fw.journal.issued_at(fw.synced_through + 1)
    money = (Kind.INVOICE.value, Kind.CREDIT.value)
    pending = fw._pending
    count += len(pending)
    amount += sum(abs(row.total) for row in pending if row.kind in money)
    if oldest is None and pending:
        oldest = pending[0].issued_at
    return Backlog(count, amount, oldest)


def issue_some(fw: Firmware, rng: random.Random) -> None:
    """Invoices, now and then a credit note or a report, some committed, some not."""
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        if choice < 0.15:
            fw.report(Kind.X_REPORT)
        elif choice < 0.3 and fw.committed:
            row = fw.journal.document(rng.randint(1, fw.committed))
            credited = row is not None and fw._credited(str(row.code), str(row.number))
            if row is not None and row.kind == Kind.INVOICE and not credited:
                fw.credit(
                    {"refers_to": {"code": row.code, "number": row.number}, "reason": "returned"}
                )
        else:
            lines = rng.randint(1, 3)
            fw.issue({"items": [dict(INVOICE["items"][0], quantity=str(lines))]})
        fw.clock.advance(rng.randint(0, 5))  # type: ignore[attr-defined]


def ack(fw: Firmware, chain: SigningConsortium, counter: int, first: bool) -> dict[str, Any]:
    doc = fw.journal.documents(counter, max_count=1, max_bytes=10**9)
    body: dict[str, Any] = {"receipts": chain.receipts(doc, fw.settings.device_id)}
    if first:
        body["consortium"] = chain.raw
    return fw.carry_out(fw.ack_sync(body))


@pytest.mark.parametrize("seed", range(6))
def test_the_backlog_after_each_receipt_is_the_journals(tmp_path: Path, seed: int) -> None:
    from device.protocol.clock import ManualClock

    fw = open_device(tmp_path / "state", training=True, limits=wide_limits(), clock=ManualClock())
    rng, chain, first = random.Random(seed), SigningConsortium(), True
    try:
        for _ in range(25):
            issue_some(fw, rng)
            fw.commit_pending()
            if rng.random() < 0.5:
                issue_some(fw, rng)  # left pending: not in the journal yet
            if fw.committed > fw.synced_through and rng.random() < 0.7:
                # Mostly the newest committed document (syncd's receipt), sometimes older.
                newest = rng.random() < 0.7
                counter = fw.committed if newest else rng.randint(1, fw.committed)
                ack(fw, chain, counter, first)
                first = False
                assert fw.synced_through == max(counter, fw.synced_through)
            assert fw.backlog == oracle_backlog(fw)
            fw.commit_pending()
            assert fw.backlog == oracle_backlog(fw)
    finally:
        fw.close()


def test_committed_hash_is_the_journals(fw: Firmware) -> None:
    assert fw.committed_hash(0) is None and fw.committed_hash(1) is None
    for _ in range(5):
        fw.issue(INVOICE)
        fw.commit_pending()
    fw.issue(INVOICE)  # pending: no committed document 6 yet
    for counter in range(0, 8):
        assert fw.committed_hash(counter) == fw.journal.hash_of(counter if counter < 6 else 0)


def test_an_offered_consortium_is_opened_once(
    fw: Firmware, monkeypatch: pytest.MonkeyPatch
) -> None:
    chain = SigningConsortium()
    fw.issue(INVOICE)
    fw.commit_pending()
    opened: list[bytes] = []
    real = trust.open_consortium

    def counting(raw: bytes, bureau_key: bytes) -> trust.ConsortiumKeys:
        opened.append(raw)
        return real(raw, bureau_key)

    monkeypatch.setattr(trust, "open_consortium", counting)
    ack(fw, chain, 1, True)
    # Its bureau signature checked once, when the offer was checked; applied as checked.
    assert opened == [chain.raw]
    assert fw.credentials.consortium is not None and fw.credentials.consortium.raw == chain.raw
    assert fw.journal.meta("chain_id") == chain.chain_id


@pytest.mark.parametrize(
    "batch",
    [
        Batch(meta={"synced_through": 7, "last_sync_at": 1_700_000_000}),
        Batch(meta={"synced_through": 9, "chain_time": 5, "time_offset": -3, "chain_id": "c"}),
        Batch(period={"z_number": 2}),
        Batch(period={"z_number": 3}, meta={"certificate": b"\x01" * 40}),
        Batch(period={"z_number": 4}, meta={"period": {"z_number": 5}}),
    ],
)
def test_meta_in_one_statement_writes_what_one_statement_per_key_wrote(
    tmp_path: Path, batch: Batch
) -> None:
    journal = Journal(tmp_path)
    try:
        journal.commit(Batch(meta={"synced_through": 1, "other": "kept"}))
        journal.commit(batch)
        expected = {"synced_through": 1, "other": "kept"}
        if batch.period is not None:
            expected["period"] = batch.period
        expected.update(batch.meta)  # written after the period, so a later value wins
        for key, value in expected.items():
            assert journal.meta(key) == value
    finally:
        journal.close()
