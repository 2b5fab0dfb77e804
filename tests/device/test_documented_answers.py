"""Facts of docs/PROTOCOL.md a client needs to use answers: the COSE key id, how a
receipt is hashed and signed (computed here by hand, not with the project's code),
ACK_SYNC's bounds, EXPORT's range, the report fields."""

from __future__ import annotations

import hashlib
from typing import Any

import cbor2
import pytest

from device.protocol.status import DeviceError, Status
from tests.device.conftest import INVOICE, Harness, wide_limits
from tests.helpers import SigningConsortium, pycose_verify
from tests.statements import covers


def journal(h: Harness) -> list[tuple[int, bytes]]:
    return h.fw.journal.documents(1, max_count=1000, max_bytes=10**9)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@covers("s-cose-kid")
async def test_a_document_is_cose_sign1_with_the_utf8_device_id_as_key_id(start: Any) -> None:
    h: Harness = await start(limits=wide_limits())
    raw = (await h.client.issue(INVOICE))["document"]
    tagged = cbor2.loads(raw)  # the device's own answer, in a test
    assert tagged.tag == 18
    protected, unprotected, payload, _ = tagged.value
    assert protected == bytes.fromhex("a10127")  # {1: -8}
    assert unprotected == {4: h.fw.settings.device_id.encode("utf-8")}
    assert cbor2.loads(payload)["device_id"] == h.fw.settings.device_id
    segment_request = cbor2.loads(await h.client.segment_request(10))
    assert segment_request.value[1] == {4: h.fw.settings.device_id.encode("utf-8")}
    info = await h.client.info()
    assert cbor2.loads(info["certificate"]).value[1] == {4: b"bureau"}


@covers("s-receipt-hashes", "s-ack-sync", "s-unknown-fields")
async def test_a_receipt_built_from_the_documented_rules_is_accepted(start: Any) -> None:
    h: Harness = await start(limits=wide_limits())
    await h.client.issue(INVOICE)
    await h.client.issue(INVOICE)
    (c1, d1), (c2, d2) = journal(h)
    chain = SigningConsortium()
    other = sha256(b"another device's document")
    h1, h2 = sha256(d1), sha256(d2)  # doc_hash: SHA-256 of the COSE_Sign1 bytes

    def leaf(x: bytes) -> bytes:
        return sha256(b"\x00" + x)

    def node(left: bytes, right: bytes) -> bytes:
        return sha256(b"\x01" + left + right)

    # Three leaves: RFC 9162 splits at 2, so root = node(node(L0, L1), L2).
    root = node(node(leaf(other), leaf(h1)), leaf(h2))
    header = {
        "chain_id": chain.chain_id,
        "height": 1,
        "prev_hash": bytes(32),
        "merkle_root": root,
        "time": "2026-01-01T00:00:00Z",
        "tx_count": 3,
    }
    signed = b"taxctl/block/v1\x00" + cbor2.dumps(header, canonical=True)
    signatures = [
        {"node_id": f"node{i}", "signature": key.sign(signed)} for i, key in enumerate(chain.nodes)
    ]
    device_id = h.fw.settings.device_id
    receipts = [
        {
            "device_id": device_id,
            "counter": c1,
            "doc_hash": h1,
            "position": 1,
            "proof": [leaf(other), leaf(h2)],
            "header": header,
            "signatures": signatures,
        },
        {
            "device_id": device_id,
            "counter": c2,
            "doc_hash": h2,
            "position": 2,
            "proof": [node(leaf(other), leaf(h1))],
            "header": header,
            "signatures": signatures,
        },
    ]
    # The header has exactly its six keys; the receipt map may carry more (ignored).
    longer = dict(header, note="x")
    refused = [dict(receipts[0], header=longer)]
    with pytest.raises(DeviceError) as err:
        await h.client.ack_sync(refused, consortium=chain.raw)
    assert err.value.status == Status.RECEIPT_INVALID and h.fw.synced_through == 0
    receipts[1]["block_hash"] = sha256(cbor2.dumps(header, canonical=True))
    answer = await h.client.ack_sync(receipts, consortium=chain.raw)
    assert answer["accepted"] == 2 and answer["synced_through"] == 2


@covers("s-ack-sync")
async def test_ack_sync_takes_1_to_1000_receipts_and_accepted_counts_them(start: Any) -> None:
    h: Harness = await start(limits=wide_limits())
    for _ in range(3):
        await h.client.issue(INVOICE)
    chain = SigningConsortium()
    device_id = h.fw.settings.device_id
    too_few: list[dict[str, Any]] = []
    too_many: list[dict[str, Any]] = [{}] * 1001
    for receipts in (too_few, too_many):
        with pytest.raises(DeviceError) as err:
            await h.client.ack_sync(receipts, consortium=chain.raw)
        assert err.value.status == Status.BAD_REQUEST
    docs = journal(h)
    answer = await h.client.ack_sync(chain.receipts(docs[:2], device_id), consortium=chain.raw)
    assert (answer["accepted"], answer["synced_through"]) == (2, 2)
    # A receipt for a document already synced still counts as accepted; nothing moves back.
    answer = await h.client.ack_sync(chain.receipts(docs[:1], device_id))
    assert (answer["accepted"], answer["synced_through"]) == (1, 2)


@covers("s-export")
async def test_export_to_is_inclusive_and_next_is_null_when_the_range_is_done(
    start: Any,
) -> None:
    h: Harness = await start(limits=wide_limits())
    for _ in range(3):
        await h.client.issue(INVOICE)
    docs = journal(h)
    whole = await h.client.export(1, 2)
    assert whole["documents"] == [d for _, d in docs[:2]]
    assert (whole["first"], whole["next"]) == (1, None)
    part = await h.client.export(1, max_bytes=len(docs[0][1]))
    assert part["documents"] == [docs[0][1]] and part["next"] == 2
    rest = await h.client.export(3)  # `to` left out: through the last document
    assert rest["documents"] == [docs[2][1]] and rest["next"] is None
    empty = await h.client.export(4)
    assert (empty["documents"], empty["first"], empty["next"]) == ([], 4, None)
    with pytest.raises(DeviceError) as err:
        await h.client.export(5)
    assert err.value.status == Status.RANGE_INVALID


@covers("s-report-fields")
async def test_reports_count_documents_and_sum_by_rate_in_ascending_order(start: Any) -> None:
    h: Harness = await start(limits=wide_limits())
    invoice = await h.client.issue(INVOICE)  # a 1300 line and a 900 line
    await h.client.credit(
        {
            "refers_to": {"code": invoice["code"], "number": invoice["number"]},
            "reason": "returned",
            "items": [INVOICE["items"][0]],
        }
    )
    await h.client.x_report()
    z = await h.client.z_report()
    report = pycose_verify(z["document"], h.fw.key.public_key)
    body = report["report"]
    # Every document of the period before this one, X reports included.
    assert (body["documents"], body["invoices"], body["credits"]) == (3, 1, 1)
    assert [r["tax_rate_bp"] for r in body["by_rate"]] == [900, 1300]
    cup, tea = body["by_rate"]
    assert (cup["amount"], cup["tax"]) == (800, 72)
    assert (tea["amount"], tea["tax"]) == (0, 0)  # the tea was credited in full
    assert sum(r["amount"] for r in body["by_rate"]) == report["amount"]
    assert sum(r["tax"] for r in body["by_rate"]) == report["tax"]
