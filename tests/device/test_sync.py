"""ACK_SYNC: only a real upload, proved by a quorum receipt, unlocks the device."""

from __future__ import annotations

from typing import Any

import pytest

from device.limits import Limits
from device.protocol.keys import KeyPair
from device.protocol.status import DeviceError, Status
from tests.device.conftest import INVOICE, Harness, wide_limits
from tests.helpers import SigningConsortium

TOTAL = 2 * 1250 + 325 + 800 + 72  # INVOICE's total in fen


def journal(h: Harness) -> list[tuple[int, bytes]]:
    return h.fw.journal.documents(1, max_count=1000, max_bytes=10**9)


async def refused(h: Harness, status: Status, call: Any) -> None:
    before = h.snapshot()
    with pytest.raises(DeviceError) as err:
        await call
    assert err.value.status == status, err.value.text
    assert h.snapshot() == before


async def test_valid_receipt_unlocks_the_amount_limit(start: Any) -> None:
    h: Harness = await start(limits=Limits(offline_seconds=10**6, offline_amount=2 * TOTAL))
    chain = SigningConsortium()
    await h.client.issue(INVOICE)
    await h.client.issue(INVOICE)
    await refused(h, Status.OFFLINE_AMOUNT_LIMIT, h.client.issue(INVOICE))
    docs = journal(h)
    device_id = h.fw.settings.device_id
    # No consortium list yet, and none sent: nothing to check the quorum with.
    await refused(h, Status.RECEIPT_INVALID, h.client.ack_sync(chain.receipts(docs, device_id)))
    result = await h.client.ack_sync(chain.receipts(docs[-1:], device_id), consortium=chain.raw)
    assert result["synced_through"] == 2  # a receipt for 2 acknowledges 1 as well
    status = await h.client.status()
    assert status["unsynced_count"] == 0 and status["unsynced_amount"] == 0
    assert status["can_issue"]
    third = await h.client.issue(INVOICE)
    assert third["counter"] == 3
    assert (await h.client.get_document(counter=2))["synced"] is True
    assert (await h.client.get_document(counter=3))["synced"] is False


async def test_valid_receipt_unlocks_the_time_limit(start: Any) -> None:
    h: Harness = await start(limits=Limits(offline_seconds=3600, offline_amount=10**12))
    chain = SigningConsortium()
    await h.client.issue(INVOICE)
    h.clock.advance(3601)
    await refused(h, Status.OFFLINE_TIME_LIMIT, h.client.issue(INVOICE))
    await h.client.ack_sync(
        chain.receipts(journal(h), h.fw.settings.device_id), consortium=chain.raw
    )
    assert (await h.client.issue(INVOICE))["counter"] == 2


async def test_forged_and_mismatched_receipts_unlock_nothing(start: Any) -> None:
    h: Harness = await start(limits=Limits(offline_seconds=10**6, offline_amount=TOTAL))
    chain = SigningConsortium()
    await h.client.issue(INVOICE)
    await refused(h, Status.OFFLINE_AMOUNT_LIMIT, h.client.issue(INVOICE))
    device_id = h.fw.settings.device_id
    docs = journal(h)
    # A consortium list signed by someone other than the pinned bureau.
    rogue_bureau = SigningConsortium(bureau=KeyPair.generate())
    await refused(
        h,
        Status.CONSORTIUM_INVALID,
        h.client.ack_sync(rogue_bureau.receipts(docs, device_id), rogue_bureau.raw),
    )
    # Signed by nodes that are not in the bureau's list.
    impostors = SigningConsortium(nodes=[KeyPair.generate() for _ in range(4)])
    await refused(
        h, Status.RECEIPT_INVALID, h.client.ack_sync(impostors.receipts(docs, device_id), chain.raw)
    )
    # Two signatures of four: no quorum (2f+1 = 3).
    await refused(
        h,
        Status.RECEIPT_INVALID,
        h.client.ack_sync(chain.receipts(docs, device_id, signers=2), chain.raw),
    )
    # No signatures at all.
    await refused(
        h,
        Status.RECEIPT_INVALID,
        h.client.ack_sync(chain.receipts(docs, device_id, signers=0), chain.raw),
    )
    # A real block, but of another document.
    other = chain.receipts([(1, b"another device's document")], device_id)
    await refused(h, Status.RECEIPT_MISMATCH, h.client.ack_sync(other, chain.raw))
    # A real receipt claiming another device.
    await refused(
        h,
        Status.RECEIPT_MISMATCH,
        h.client.ack_sync(chain.receipts(docs, "TCAAAAAAAAAAAA"), chain.raw),
    )
    # Tampered audit path.
    bad = chain.receipts(docs, device_id)
    bad[0]["position"] += 1
    await refused(h, Status.RECEIPT_INVALID, h.client.ack_sync(bad, chain.raw))
    # A receipt for a counter the device never signed.
    ahead = chain.receipts(docs, device_id)
    ahead[0]["counter"] = 5
    await refused(h, Status.RECEIPT_MISMATCH, h.client.ack_sync(ahead, chain.raw))
    # One good receipt among bad ones: refused as a whole.
    mixed = chain.receipts(docs, device_id) + chain.receipts(docs, device_id, signers=1)
    await refused(h, Status.RECEIPT_INVALID, h.client.ack_sync(mixed, chain.raw))
    # Only now, the real thing.
    await h.client.ack_sync(chain.receipts(docs, device_id), chain.raw)
    assert (await h.client.issue(INVOICE))["counter"] == 2


async def test_replayed_receipt_changes_nothing_and_old_epochs_are_refused(start: Any) -> None:
    h: Harness = await start(limits=Limits(offline_seconds=10**6, offline_amount=2 * TOTAL))
    chain = SigningConsortium(epoch=2)
    device_id = h.fw.settings.device_id
    await h.client.issue(INVOICE)
    first = chain.receipts(journal(h), device_id)
    await h.client.ack_sync(first, chain.raw)
    synced_at = h.fw.last_sync_at
    await h.client.issue(INVOICE)
    await h.client.issue(INVOICE)
    before = h.snapshot()
    h.clock.advance(60)
    result = await h.client.ack_sync(first)  # an old receipt, replayed by a rogue host
    assert result["synced_through"] == 1
    assert h.snapshot() == before and h.fw.last_sync_at == synced_at
    with pytest.raises(DeviceError) as err:
        await h.client.issue(INVOICE)
    assert err.value.status == Status.OFFLINE_AMOUNT_LIMIT
    older = SigningConsortium(epoch=1, nodes=chain.nodes)
    await refused(
        h,
        Status.CONSORTIUM_INVALID,
        h.client.ack_sync(older.receipts(journal(h)[1:], device_id), older.raw),
    )


async def test_fetch_returns_unsynced_documents_within_bounds(start: Any) -> None:
    h: Harness = await start(limits=wide_limits())
    chain = SigningConsortium()
    for _ in range(10):
        await h.client.issue(INVOICE)
    page = await h.client.fetch(max_count=4)
    assert page["first"] == 1 and len(page["documents"]) == 4 and page["last_counter"] == 10
    small = await h.client.fetch(from_counter=5, max_bytes=1)
    assert small["first"] == 5 and len(small["documents"]) == 1  # always at least one
    await h.client.ack_sync(chain.receipts(journal(h)[:6], h.fw.settings.device_id), chain.raw)
    rest = await h.client.fetch(from_counter=1)
    assert rest["first"] == 7 and len(rest["documents"]) == 4 and rest["synced_through"] == 6
    export = await h.client.export(1)
    assert export["first"] == 1 and len(export["documents"]) == 10 and export["next"] is None
    with pytest.raises(DeviceError) as err:
        await h.client.export(50)
    assert err.value.status == Status.RANGE_INVALID
