"""Offline 查验 (C8): the printer signs the receipt's QR, so before the shop uploads a buyer
learns `not_yet_uploaded` (a registered printer signed it, and by when it must be on the
chain), a tampered or foreign QR is `forged`, and after upload the same QR is `authentic`."""

from __future__ import annotations

import base64
import datetime
from dataclasses import replace
from typing import Any

from device.protocol import qr
from device.protocol.document import parse_document
from device.protocol.keys import KeyPair
from tests.hostsim.chain.conftest import BUYER_TAX_ID, Api, DeviceSim, invoice_body


def issue_offline(sim: DeviceSim) -> tuple[str, bytes]:
    """An invoice signed and journaled by the printer but never sent: (its QR text, bytes)."""
    response = sim.fw.issue(invoice_body(buyer_tax_id=BUYER_TAX_ID))
    raws = sim._commit()
    return str(response["qr"]), raws[0]


async def ask(api: Api, payload: str) -> dict[str, Any]:
    status, answer = await api.call("POST", "/v1/verify", json={"payload": payload})
    assert status == 200, answer
    return dict(answer)


async def test_a_genuine_offline_invoice_is_not_yet_uploaded_then_authentic(
    api: Api, device: DeviceSim
) -> None:
    await api.register(device)
    payload, raw = issue_offline(device)
    doc = parse_document(raw)
    answer = await ask(api, payload)
    assert answer["result"] == "not_yet_uploaded", answer
    date = doc.payload["issued_at"][:10]
    assert answer["device_id"] == device.device_id and answer["date"] == date
    assert answer["seller"] == {
        "name": doc.payload["seller"]["name"],
        "tax_id": doc.payload["seller"]["tax_id"],
    }
    assert answer["total"] == doc.total and answer["overdue"] is False
    # the end of the printed day (UTC) plus the printer's 72 h offline limit
    deadline = datetime.date.fromisoformat(date) + datetime.timedelta(days=4)
    assert answer["upload_by"] == f"{deadline.isoformat()}T00:00:00Z"
    assert str(doc.check_code) not in str(answer) and BUYER_TAX_ID not in str(answer)
    status, by_get = await api.call("GET", "/v1/verify", params={"q": payload})
    assert status == 200 and by_get == answer
    assert {r["status"] for r in await api.submit([raw])} == {"committed"}
    after = await ask(api, payload)
    assert after["result"] == "authentic" and after["device_id"] == device.device_id


async def test_a_tampered_qr_is_forged(api: Api, device_factory: Any) -> None:
    sim, stranger = device_factory(), device_factory()
    await api.register(sim)
    payload, _ = issue_offline(sim)
    query = qr.parse(payload)
    assert query.signature is not None and query.total is not None
    bigger = replace(query, total=query.total * 100).to_payload()
    flipped = bytes([query.signature[0] ^ 1]) + query.signature[1:]
    bad_signature = replace(query, signature=flipped).to_payload()
    other_key = qr.sign_qr(
        replace(query, device_id=None, doc_hash=None, signature=None),
        bytes(query.doc_hash or b""),
        sim.device_id,
        KeyPair.derive("not the printer"),
    ).to_payload()
    unregistered, _ = issue_offline(stranger)  # a printer this chain never registered
    for tampered, reason in [
        (bigger, "signature"),
        (bad_signature, "signature"),
        (other_key, "signature"),
        (unregistered, "device"),
    ]:
        answer = await ask(api, tampered)
        assert answer["result"] == "forged", (tampered, answer)
        assert reason in answer["reason"]
        assert set(answer) == {"result", "code", "number", "training", "reason"}
    # unsigned (an older receipt, or typed in): nothing to check the issuer with
    unsigned = replace(query, device_id=None, doc_hash=None, signature=None).to_payload()
    assert (await ask(api, unsigned))["result"] == "not_found"


async def test_a_revoked_printers_qr_is_forged(api: Api, device: DeviceSim) -> None:
    await api.register(device)
    payload, _ = issue_offline(device)
    status, _ = await api.call(
        "POST",
        f"/v1/devices/{device.device_id}/revoke",
        json={"reason": "stolen"},
        headers=api.audit,
    )
    assert status == 200
    answer = await ask(api, payload)
    assert (answer["result"], "revoked" in answer["reason"]) == ("forged", True)


async def test_a_malformed_signature_field_is_a_bad_request(api: Api, device: DeviceSim) -> None:
    await api.register(device)
    payload, _ = issue_offline(device)
    short = payload.rsplit("&s=", 1)[0] + "&s=" + base64.urlsafe_b64encode(b"x").decode()
    status, body = await api.call("POST", "/v1/verify", json={"payload": short})
    assert (status, body["error"]["code"]) == (400, "bad_request")
