"""Every validation rule rejects with its own code and changes nothing; the happy path commits."""

from __future__ import annotations

import secrets
import time
from typing import Any

import pytest

from device.protocol import codec, cose, trust
from device.protocol.document import format_utc, parse_document, sign_document
from device.protocol.invoice import DEFAULT_TAX_RATES, parse_items
from device.protocol.keys import KeyPair
from tests.hostsim.chain.conftest import Api, DeviceSim, b64, resign, snapshot

pytestmark = pytest.mark.asyncio


async def expect_rejected(api: Api, sim: DeviceSim, raw: bytes, code: str) -> dict[str, Any]:
    before = await snapshot(api, sim.device_id)
    [result] = await api.submit([raw])
    assert result["status"] == "rejected", result
    assert result["code"] == code, result
    assert result["message"]
    after = await snapshot(api, sim.device_id)
    # Equivocation evidence is recorded, but no state a later document depends on moves.
    assert after == before
    return result


async def test_happy_path_commits_with_receipts_that_verify(api: Api, device: DeviceSim) -> None:
    await api.register(device)
    docs = device.issue(20)
    results = await api.submit(docs)
    assert [r["status"] for r in results] == ["committed"] * 20
    _, info = await api.call("GET", "/v1/consortium")
    consortium = trust.open_consortium(
        bytes.fromhex(info["consortium_hex"])
        if "consortium_hex" in info
        else _b64d(info["consortium"]),
        trust.TRAINING_BUREAU.public_key,
    )
    for raw, result in zip(docs, results, strict=True):
        receipt = _receipt_bytes(result["receipt"])
        verified = trust.verify_receipt(receipt, consortium)
        assert verified.doc_hash == parse_document(raw).hash
        assert (verified.device_id, verified.counter) == (
            device.device_id,
            parse_document(raw).counter,
        )


async def test_unknown_device(api: Api, device: DeviceSim) -> None:
    [result] = await api.submit(device.issue(1))
    assert (result["status"], result["code"]) == ("rejected", "unknown_device")
    assert api.chain.engine.height == 0


async def test_bad_signature(api: Api, device: DeviceSim) -> None:
    await api.register(device)
    [raw] = device.issue(1)
    forged = resign(device, raw, key=KeyPair.generate())
    await expect_rejected(api, device, forged, "bad_signature")
    assert (await api.submit([raw]))[0]["status"] == "committed"


async def test_revoked_device(api: Api, device: DeviceSim) -> None:
    await api.register(device)
    token = api.chain.bureau.admin_token
    status, body = await api.call(
        "POST", f"/v1/devices/{device.device_id}/revoke", json={"reason": "stolen"}
    )
    assert (status, body["error"]["code"]) == (401, "unauthorized")
    status, body = await api.call(
        "POST",
        f"/v1/devices/{device.device_id}/revoke",
        json={"reason": "stolen"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert status == 200, body
    result = await expect_rejected(api, device, device.issue(1)[0], "device_revoked")
    assert "stolen" in result["message"]


async def test_prev_hash_mismatch(api: Api, device: DeviceSim) -> None:
    await api.register(device)
    first, second = device.issue(2)
    assert (await api.submit([first]))[0]["status"] == "committed"
    bad = resign(device, second, prev_hash=bytes(32))
    await expect_rejected(api, device, bad, "prev_hash_mismatch")
    assert (await api.submit([second]))[0]["status"] == "committed"


async def test_number_outside_segment_and_used(api: Api, device: DeviceSim) -> None:
    await api.register(device)
    first, second = device.issue(2)
    await api.submit([first])
    outside = resign(device, second, number="99999999")
    await expect_rejected(api, device, outside, "number_outside_segment")
    reused = resign(device, second, number=parse_document(first).number)
    await expect_rejected(api, device, reused, "number_used")
    _, dev = await api.call("GET", f"/v1/devices/{device.device_id}", headers=api.audit)
    [evidence] = dev["equivocations"]
    assert (
        evidence["rule"] == "number"
        and evidence["offending_hash"] == parse_document(reused).hash.hex()
    )
    assert evidence["existing_hash"] == parse_document(first).hash.hex()


async def test_totals_mismatch(api: Api, device: DeviceSim) -> None:
    await api.register(device)
    [raw] = device.issue(1)
    payload = parse_document(raw).payload
    items = [dict(payload["items"][0], amount=payload["items"][0]["amount"] + 1)]
    await expect_rejected(
        api,
        device,
        resign(device, raw, items=items, amount=payload["amount"] + 1, total=payload["total"] + 1),
        "totals_mismatch",
    )
    await expect_rejected(
        api,
        device,
        resign(device, raw, amount=payload["amount"] + 5, total=payload["total"] + 5),
        "totals_mismatch",
    )


async def test_seller_and_certificate_validity(api: Api, device: DeviceSim) -> None:
    await api.register(device)
    [raw] = device.issue(1)
    seller = {"name": "Someone Else", "tax_id": "91440300MA5G12345L"}
    await expect_rejected(api, device, resign(device, raw, seller=seller), "seller_mismatch")
    await expect_rejected(
        api, device, resign(device, raw, issued_at="2001-01-01T00:00:00Z"), "certificate_expired"
    )


async def test_clock_regression(api: Api, device: DeviceSim) -> None:
    await api.register(device)
    first, second = device.issue(2)
    tomorrow = format_utc(time.time() + 86400)
    assert (await api.submit([resign(device, first, issued_at=tomorrow)]))[0][
        "status"
    ] == "committed"
    # the device's own second document now chains to a document it did not sign: re-chain it
    _, dev = await api.call("GET", f"/v1/devices/{device.device_id}", headers=api.audit)
    head = dev["last_hash"]
    earlier = resign(device, second, prev_hash=bytes.fromhex(head))
    await expect_rejected(api, device, earlier, "clock_regression")


async def test_equivocation_on_counter_is_recorded(api: Api, device: DeviceSim) -> None:
    await api.register(device)
    [raw] = device.issue(1)
    await api.submit([raw])
    other = resign(device, raw, buyer={"name": "Another Buyer"})
    await expect_rejected(api, device, other, "equivocation")
    _, dev = await api.call("GET", f"/v1/devices/{device.device_id}", headers=api.audit)
    [evidence] = dev["equivocations"]
    assert evidence["rule"] == "counter" and evidence["counter"] == 1
    assert _b64d(evidence["existing_cose_sign1"]) == raw
    assert _b64d(evidence["offending_cose_sign1"]) == other
    # the same forgery again is rejected again but recorded once
    await expect_rejected(api, device, other, "equivocation")
    _, dev = await api.call("GET", f"/v1/devices/{device.device_id}", headers=api.audit)
    assert len(dev["equivocations"]) == 1


async def test_credit_rules_and_state_on_the_original(api: Api, device: DeviceSim) -> None:
    await api.register(device)
    [original] = device.issue(1, total_units=3, price=1000)
    doc = parse_document(original)
    await api.submit([original])
    part = device.credit(
        doc.code,
        doc.number,
        items=[{"name": "Tea", "quantity": "1", "unit_price": 1000, "tax_rate_bp": 1300}],
    )
    assert (await api.submit([part]))[0]["status"] == "committed"
    _, inv = await api.call("GET", f"/v1/invoices/{doc.code}/{doc.number}", headers=api.audit)
    assert inv["state"] == "partially_credited" and inv["credited"] == 1130
    assert [h["event"] for h in inv["history"]] == ["issued", "credited"]
    [invoice2] = device.issue(1)
    await api.submit([invoice2])
    # a credit for more than remains, signed by the device (its own check is bypassed)
    [template] = device.issue(1)
    await api.submit([template])
    line = parse_document(part).payload["items"][0]
    big = [dict(line, quantity="-3", amount=-3000, tax=-390)]
    tip = parse_document(template)
    # issued_at too: the credit was signed before the template, and the clock never runs back
    after_tip = {
        "counter": tip.counter + 1,
        "prev_hash": tip.hash,
        "number": _next_number(tip),
        "issued_at": tip.payload["issued_at"],
    }
    over = resign(
        device,
        part,
        **after_tip,
        items=big,
        amount=-3000,
        tax=-390,
        total=-3390,
    )
    await expect_rejected(api, device, over, "credit_exceeds_original")
    unknown = resign(
        device,
        part,
        **after_tip,
        refers_to={"code": doc.code, "number": "00000999"},
    )
    await expect_rejected(api, device, unknown, "credit_unknown_original")
    not_invoice = resign(
        device,
        part,
        **after_tip,
        refers_to={"code": doc.code, "number": parse_document(part).number},
    )
    await expect_rejected(api, device, not_invoice, "credit_not_an_invoice")
    rest = device.credit(
        doc.code,
        doc.number,
        items=[{"name": "Tea", "quantity": "2", "unit_price": 1000, "tax_rate_bp": 1300}],
    )  # what remains
    assert (await api.submit([rest]))[0]["status"] == "committed"
    _, inv = await api.call("GET", f"/v1/invoices/{doc.code}/{doc.number}", headers=api.audit)
    assert inv["state"] == "credited" and inv["remaining"] == 0


async def test_credit_of_another_sellers_invoice(api: Api, device_factory: Any) -> None:
    a, b = device_factory(), device_factory()
    await api.register(a)
    # b: same training taxpayer by default; give b's credit another seller to test the rule
    await api.register(b)
    [original] = a.issue(1)
    await api.submit([original])
    doc = parse_document(original)
    [b_first] = b.issue(1)
    credit = resign(
        b,
        b_first,
        kind="credit",
        refers_to={"code": doc.code, "number": doc.number},
        reason="return",
        items=[
            dict(parse_document(b_first).payload["items"][0], quantity="-1", amount=-1000, tax=-130)
        ],
        amount=-1000,
        tax=-130,
        total=-1130,
    )
    other_seller = dict(doc.payload["seller"], tax_id="91440300MA5G12345L")
    api.chain.engine.state.devices[b.device_id].certificate = _with_taxpayer(
        api.chain.engine.state.devices[b.device_id].certificate, other_seller
    )
    credit = resign(b, credit, seller=other_seller)
    await expect_rejected(api, b, credit, "credit_other_seller")


async def test_training_document_on_a_production_chain(tmp_path: Any) -> None:
    from hostsim.chain.node import Chain

    chain = Chain.open(tmp_path / "prod", training=False, block_interval=0.005)
    chain.engine.start()
    try:
        key = KeyPair.generate()
        taxpayer = {"name": "Shop", "tax_id": "91440300MA5G12345L"}
        csr = trust.make_csr(key, taxpayer, False, 0)
        code = chain.acts.enrolments.issue(dict(taxpayer)).code
        out = await chain.acts.register(csr, None, [], 5, code)
        cert = trust.open_certificate(out["certificate"], chain.bureau.public_key)
        request = trust.make_segment_request(
            key, cert.device_id, 100, time.time(), secrets.token_bytes(16)
        )
        seg = await chain.acts.allocate_signed(cert.device_id, request, 5)
        fields = {
            "device_id": cert.device_id,
            "counter": 1,
            "code": seg.code,
            "number": "00000001",
            "kind": "invoice",
            "issued_at": format_utc(time.time()),
            "seller": cert.taxpayer,
            "buyer": None,
            "items": [
                line.to_payload()
                for line in parse_items(
                    [{"name": "Tea", "quantity": "1", "unit_price": 100, "tax_rate_bp": 1300}],
                    DEFAULT_TAX_RATES,
                    credit=False,
                )
            ],
            "amount": 100,
            "tax": 13,
            "total": 113,
            "prev_hash": bytes(32),
            "offline": False,
            "training": True,
        }
        raw, _ = sign_document(key, fields)
        [result] = await chain.engine.submit([raw], 5)
        assert (result.status, result.code) == ("rejected", "training_not_allowed")
        raw, _ = sign_document(key, {**fields, "training": False})
        [result] = await chain.engine.submit([raw], 5)
        assert result.status == "committed", result
    finally:
        await chain.engine.stop()
        chain.close()


async def test_malformed_documents(api: Api, device: DeviceSim) -> None:
    await api.register(device)
    status, body = await api.call(
        "POST", "/v1/documents", json={"documents": [b64(b"\xa0garbage")]}
    )
    assert status == 200 and body["results"][0]["code"] == "malformed_document"
    status, body = await api.call("POST", "/v1/documents", json={"documents": ["not base64!"]})
    assert (status, body["error"]["code"]) == (400, "bad_request")
    status, body = await api.call("POST", "/v1/documents", json={"documents": ["AA=="] * 1001})
    assert (status, body["error"]["code"]) == (413, "batch_too_large")
    status, body = await api.call(
        "POST", "/v1/documents", data=b"x", headers={"Content-Type": "text/plain"}
    )
    assert (status, body["error"]["code"]) == (415, "unsupported_media_type")


async def test_a_kind_that_is_a_map_or_an_array_is_malformed_and_the_chain_answers_on(
    api: Api, device: DeviceSim
) -> None:
    """A kind that cannot be a dictionary key (a map, an array) was a TypeError out of the
    shape check: the whole batch failed instead of one document being malformed."""
    await api.register(device)
    key = KeyPair.generate()
    for kind in ([], {}, [["invoice"]]):
        raw = cose.sign1(codec.encode({"kind": kind}), key, device.device_id.encode())
        status, body = await api.call("POST", "/v1/documents", json={"documents": [b64(raw)]})
        assert status == 200, body
        assert body["results"][0]["code"] == "malformed_document", body
    status, _ = await api.call("GET", "/v1/health")
    assert status == 200


def _b64d(text: str) -> bytes:
    import base64

    return base64.b64decode(text)


def _receipt_bytes(receipt: dict[str, Any]) -> dict[str, Any]:
    """A JSON receipt (hex for bytes) back to the device's CBOR form."""
    header = dict(receipt["header"])
    header["prev_hash"] = bytes.fromhex(header["prev_hash"])
    header["merkle_root"] = bytes.fromhex(header["merkle_root"])
    return {
        **receipt,
        "doc_hash": bytes.fromhex(receipt["doc_hash"]),
        "proof": [bytes.fromhex(p) for p in receipt["proof"]],
        "header": header,
        "signatures": [
            {"node_id": s["node_id"], "signature": bytes.fromhex(s["signature"])}
            for s in receipt["signatures"]
        ],
    }


def _next_number(doc: Any) -> str:
    return f"{int(doc.number) + 1:08d}"


def _with_taxpayer(cert: trust.DeviceCert, taxpayer: dict[str, str]) -> trust.DeviceCert:
    from dataclasses import replace

    return replace(cert, taxpayer=taxpayer)


async def test_a_number_in_other_script_digits_is_malformed(api: Api, device: DeviceSim) -> None:
    """int() reads "٠٠٠٠٠٠٠١" as 1: such a number would name an invoice twice."""
    await api.register(device)
    [raw] = device.issue(1)
    number = parse_document(raw).number
    assert number is not None
    other = "".join(chr(0x0660 + int(c)) for c in number)  # ARABIC-INDIC digits
    await expect_rejected(api, device, resign(device, raw, number=other), "malformed_document")
    assert (await api.submit([raw]))[0]["status"] == "committed"
