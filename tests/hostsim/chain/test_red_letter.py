"""Red-letter rule: a claimed invoice is credited only with its buyer's confirmation.

The buyer who claimed an invoice (took its deduction) confirms a credit through
the chain with its API key; the seller's credit note then names the
confirmation, signed into its payload. A credit note against a claimed invoice
without one, or naming a wrong, used or another invoice's one, is rejected and
changes nothing. An unclaimed invoice still credits without one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from device import render
from device.protocol.document import Document, parse_document
from hostsim.chain.node import Chain
from tests.hostsim.chain.conftest import BUYER_TAX_ID, Api, DeviceSim, resign, snapshot

pytestmark = pytest.mark.asyncio


async def _buyer(api: Api, tax_id: str = BUYER_TAX_ID) -> dict[str, str]:
    token = api.chain.bureau.admin_token
    status, buyer = await api.call(
        "POST",
        "/v1/buyers",
        json={"tax_id": tax_id, "name": "Buyer Co"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert status == 201, buyer
    return {"Authorization": f"Bearer {buyer['api_key']}"}


async def _claimed(api: Api, device: DeviceSim, count: int = 1) -> tuple[list[Document], Any]:
    """`count` invoices to the buyer, committed and claimed by it."""
    await api.register(device)
    raws = device.issue(count, total_units=2, price=1000, buyer_tax_id=BUYER_TAX_ID)
    assert [r["status"] for r in await api.submit(raws)] == ["committed"] * count
    as_buyer = await _buyer(api)
    docs = [parse_document(raw) for raw in raws]
    for doc in docs:
        status, body = await api.call(
            "POST", f"/v1/invoices/{doc.code}/{doc.number}/claim", headers=as_buyer
        )
        assert status == 201, body
    return docs, as_buyer


async def _confirm(api: Api, doc: Document, headers: Any, amount: int) -> tuple[int, Any]:
    return await api.call(
        "POST",
        f"/v1/invoices/{doc.code}/{doc.number}/credit-confirmations",
        json={"amount": amount},
        headers=headers,
    )


async def _rejected(api: Api, device: DeviceSim, raw: bytes, code: str) -> None:
    before = await snapshot(api, device.device_id)
    [result] = await api.submit([raw])
    assert (result["status"], result.get("code")) == ("rejected", code), result
    assert await snapshot(api, device.device_id) == before


async def _credited(api: Api, doc: Document) -> int:
    _, inv = await api.call("GET", f"/v1/invoices/{doc.code}/{doc.number}", headers=api.audit)
    return int(inv["credited"])


async def test_claimed_invoice_is_not_credited_without_the_buyer(
    api: Api, device: DeviceSim
) -> None:
    """The attack: the seller reverses a sale whose deduction the buyer already took."""
    [doc], _ = await _claimed(api, device)
    full = device.credit(str(doc.code), str(doc.number))  # the device signs it
    await _rejected(api, device, full, "credit_needs_confirmation")
    assert await _credited(api, doc) == 0


async def test_credit_with_the_buyers_confirmation_commits_once(
    api: Api, device: DeviceSim
) -> None:
    [doc], as_buyer = await _claimed(api, device)
    status, body = await _confirm(api, doc, as_buyer, doc.total)
    assert status == 201, body
    rc = body["confirmation"]
    assert body == {"confirmation": rc, "code": doc.code, "number": doc.number, "amount": 2260}
    assert len(rc) == 18 and rc.startswith("RC") and rc[2:] == rc[2:].upper()
    credit = device.credit(str(doc.code), str(doc.number), confirmation=rc)
    payload = parse_document(credit).payload
    assert payload["confirmation"] == rc  # signed by the device, and printed on the receipt
    assert f"Confirmed{' ' * 5}{rc}" in render.text(payload, 58).splitlines()
    [result] = await api.submit([credit])
    assert result["status"] == "committed", result
    assert await _credited(api, doc) == doc.total
    _, inv = await api.call("GET", f"/v1/invoices/{doc.code}/{doc.number}", headers=api.audit)
    assert [h["event"] for h in inv["history"]] == [
        "issued",
        "claimed",
        "credit_confirmed",
        "credited",
    ]


async def test_used_wrong_and_other_confirmations_are_refused(api: Api, device: DeviceSim) -> None:
    [a, b], as_buyer = await _claimed(api, device, count=2)
    _, small = await _confirm(api, a, as_buyer, 1130)  # one unit of a
    _, for_b = await _confirm(api, b, as_buyer, b.total)
    # a confirmation nobody issued, signed by the device; the variants below are the same
    # credit note signed again, so each is the device's next document
    base = device.credit(str(a.code), str(a.number), [_line()], confirmation="RC" + "0" * 16)
    await _rejected(api, device, base, "confirmation_invalid")
    other = resign(device, base, confirmation=for_b["confirmation"])  # b's, for a credit of a
    await _rejected(api, device, other, "confirmation_invalid")
    big = resign(device, base, **_units(base, 2), confirmation=small["confirmation"])
    await _rejected(api, device, big, "confirmation_invalid")  # more than the buyer confirmed
    good = parse_document(resign(device, base, confirmation=small["confirmation"]))
    assert (await api.submit([good.raw]))[0]["status"] == "committed"
    # the same confirmation again, on the device's next credit note: used up
    later = device.credit(str(a.code), str(a.number), [_line()])
    again = resign(device, later, prev_hash=good.hash, confirmation=small["confirmation"])
    await _rejected(api, device, again, "confirmation_invalid")
    assert await _credited(api, a) == 1130 and await _credited(api, b) == 0
    _, inv = await api.call("GET", f"/v1/invoices/{b.code}/{b.number}", headers=api.audit)
    assert [h["event"] for h in inv["history"]] == ["issued", "claimed", "credit_confirmed"]


def _units(raw: bytes, count: int) -> dict[str, Any]:
    """A credit of `count` units of Tea, its line in the signed (canonical) key order."""
    amount, tax = -1000 * count, -130 * count
    line = parse_document(raw).payload["items"][0]
    item = dict(line, quantity=str(-count), amount=amount, tax=tax)
    return {"items": [item], "amount": amount, "tax": tax, "total": amount + tax}


def _line() -> dict[str, Any]:
    return {"name": "Tea", "quantity": "1", "unit_price": 1000, "tax_rate_bp": 1300}


async def test_unclaimed_invoice_credits_without_a_confirmation(
    api: Api, device: DeviceSim
) -> None:
    await api.register(device)
    [raw] = device.issue(1, buyer_tax_id=BUYER_TAX_ID)
    await api.submit([raw])
    doc = parse_document(raw)
    assert (await api.submit([device.credit(str(doc.code), str(doc.number))]))[0][
        "status"
    ] == "committed"


async def test_confirmation_route_refusals(api: Api, device: DeviceSim) -> None:
    await api.register(device)
    [raw, unclaimed] = device.issue(2, buyer_tax_id=BUYER_TAX_ID)
    await api.submit([raw, unclaimed])
    doc, other = parse_document(raw), parse_document(unclaimed)
    as_buyer = await _buyer(api)
    stranger = await _buyer(api, "91110000MA0000001L")
    status, _ = await api.call(
        "POST", f"/v1/invoices/{doc.code}/{doc.number}/claim", headers=as_buyer
    )
    assert status == 201
    cases = [
        (doc, {}, 100, 401, "unauthorized"),
        (doc, stranger, 100, 403, "not_the_buyer"),
        (other, as_buyer, 100, 409, "not_claimed"),
        (doc, as_buyer, 0, 400, "bad_request"),
        (doc, as_buyer, True, 400, "bad_request"),
        (doc, as_buyer, doc.total + 1, 400, "credit_exceeds_original"),
    ]
    for target, headers, amount, want_status, want_code in cases:
        status, body = await _confirm(api, target, headers, amount)  # type: ignore[arg-type]
        assert (status, body["error"]["code"]) == (want_status, want_code), body
    status, body = await api.call(
        "POST",
        "/v1/invoices/000000000000/00000000/credit-confirmations",
        headers=as_buyer,
        json={"amount": 1},
    )
    assert (status, body["error"]["code"]) == (404, "not_found")
    assert api.chain.ledger.db.execute("SELECT count(*) FROM confirmations").fetchone() == (0,)


async def test_confirmation_survives_a_restart(tmp_path: Path, device: DeviceSim) -> None:
    data = tmp_path / "restart"
    chain = Chain.open(data, training=True, block_interval=0.001)
    chain.engine.start()
    try:
        await chain.acts.register(None, device.certificate, device.segments, 5)
        [raw] = device.issue(1, buyer_tax_id=BUYER_TAX_ID)
        doc = parse_document(raw)
        assert (await chain.engine.submit([raw], 5))[0].status == "committed"
        chain.ledger.add_buyer("B1", BUYER_TAX_ID, "Buyer Co", b"k" * 32, "2026-01-01T00:00:00Z")
        await chain.acts.claim(str(doc.code), str(doc.number), "B1", BUYER_TAX_ID, 5)
        out = await chain.acts.confirm_credit(str(doc.code), str(doc.number), "B1", doc.total, 5)
    finally:
        await chain.engine.stop()
        chain.close()
    chain = Chain.open(data, training=True, block_interval=0.001)
    chain.engine.start()
    try:
        credit = device.credit(str(doc.code), str(doc.number), confirmation=out["confirmation"])
        [result] = await chain.engine.submit([credit], 5)
        assert result.status == "committed", result
    finally:
        await chain.engine.stop()
        chain.close()
