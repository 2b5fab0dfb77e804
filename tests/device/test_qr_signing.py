"""The printer signs each receipt's QR (offline 查验): ISSUE, CREDIT and GET_DOCUMENT answer
the same signed payload for a document, one that verifies with the device key and names
this document; a report has none."""

from __future__ import annotations

import timeit
from typing import Any

from device import render
from device.protocol import qr
from device.protocol.document import parse_document
from tests.device.conftest import INVOICE, Harness, wide_limits


def check_signed(response: dict[str, Any], public_key: bytes) -> qr.VerificationQuery:
    document = parse_document(response["document"])
    assert qr.device_payload(response["qr"], document.payload, document.hash, public_key)
    query = qr.parse(response["qr"])
    assert (query.device_id, query.doc_hash) == (document.device_id, document.hash)
    assert qr.check_qr_signature(query, public_key)
    return query


async def test_issue_credit_and_reprint_carry_the_same_signed_qr(start: Any) -> None:
    h: Harness = await start(limits=wide_limits())
    public_key = h.fw.key.public_key
    issued = await h.client.issue(INVOICE)
    query = check_signed(issued, public_key)
    assert (query.code, query.number, query.total) == (
        issued["code"],
        issued["number"],
        issued["total"],
    )
    reprint = await h.client.get_document(counter=issued["counter"])
    assert reprint["qr"] == issued["qr"]
    by_number = await h.client.get_document(code=issued["code"], number=issued["number"])
    assert by_number["qr"] == issued["qr"]
    credit = await h.client.credit(
        {"refers_to": {"code": issued["code"], "number": issued["number"]}, "reason": "return"}
    )
    assert check_signed(credit, public_key).total == credit["total"] < 0
    report = await h.client.x_report()
    assert report["qr"] is None


async def test_the_receipt_prints_the_devices_qr_and_the_local_time(start: Any) -> None:
    h: Harness = await start(limits=wide_limits())
    issued = await h.client.issue(INVOICE)
    payload = parse_document(issued["document"]).payload
    text = render.text(payload, 80, issued["qr"])
    assert "".join(text.split("\nVerify:\n")[1].splitlines()) == issued["qr"]
    local = render.local_time(payload["issued_at"])
    assert local.endswith(" +08:00")
    assert any(line.startswith("Issued") and line.endswith(local) for line in text.splitlines())
    narrow = render.text(payload, 58, issued["qr"]).splitlines()
    assert any(line.startswith("Time") and line.endswith(local) for line in narrow)
    assert render.local_time("2026-01-01T00:00:00Z") == "2026-01-01 08:00:00 +08:00"
    assert render.local_time("2026-01-01T00:00:00Z", "UTC") == "2026-01-01 00:00:00 +00:00"


def test_the_qr_signature_costs_one_ed25519_signature(tmp_path: Any) -> None:
    """Bounded, not a benchmark: signing the QR is far below a millisecond per document."""
    from device.app import open_device

    fw = open_device(tmp_path / "state", training=True, limits=wide_limits())
    try:
        fw.issue(INVOICE)
        row = fw.take_batch().documents[0]
        payload = parse_document(row.doc).payload
        per_call = (
            min(
                timeit.repeat(
                    lambda: qr.sign_qr(
                        qr.for_document(payload), row.hash, payload["device_id"], fw.key
                    ),
                    number=200,
                    repeat=3,
                )
            )
            / 200
        )
        assert per_call < 0.002, per_call
    finally:
        fw.journal.close()
