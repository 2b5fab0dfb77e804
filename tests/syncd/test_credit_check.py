"""A credit note of a claimed invoice is refused by syncd before the printer signs it.

Once signed, a credit note the chain rejects (credit_needs_confirmation) holds
back every later document of that printer, since the chain admits a device's
documents only in counter order: the shop would be stuck until its offline
limits lock the printer. So syncd asks the chain (查验, as a holder of the
receipt asks) whether the original is claimed before sending CREDIT, and the
POS gets a 409 with nothing signed; with the buyer's confirmation the credit
note is issued and committed. Before, the POS got a 201 for a credit note the
chain then refused forever.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.helpers import invoice
from tests.shop import Shop, http

BUYER = {"name": "Buyer Co", "tax_id": "91440300MA5G12345L"}
SALE = invoice(1000, buyer=BUYER)


def _claimed_invoice(shop: Shop) -> tuple[dict[str, Any], dict[str, str]]:
    shop.start_chain()
    shop.start_device()
    shop.start_syncd()
    status, invoice = shop.issue(SALE)
    assert status == 201, invoice
    shop.wait_synced(1)
    assert shop.chain is not None
    admin = Path(shop.chain.ready["admin_token_file"]).read_text().strip()
    status, buyer, _ = http(
        "POST", f"{shop.chain_url}/v1/buyers", BUYER, {"Authorization": f"Bearer {admin}"}
    )
    assert status == 201, buyer
    as_buyer = {"Authorization": f"Bearer {buyer['api_key']}"}
    path = f"{shop.chain_url}/v1/invoices/{invoice['code']}/{invoice['number']}/claim"
    status, body, _ = http("POST", path, {}, as_buyer)
    assert status == 201, body
    return invoice, as_buyer


def test_credit_of_a_claimed_invoice_is_refused_before_signing(shop: Shop) -> None:
    invoice, as_buyer = _claimed_invoice(shop)
    credit = {
        "refers_to": {"code": invoice["code"], "number": invoice["number"]},
        "reason": "returned",
    }
    status, body, _ = http("POST", f"{shop.api}/v1/credit-notes", credit)
    assert (status, body["error"]) == (409, "CREDIT_NEEDS_CONFIRMATION"), body
    assert shop.device_status()["counter"] == 1  # the printer signed nothing
    # the buyer confirms on the chain; the credit note names the confirmation
    confirm = f"{shop.chain_url}/v1/invoices/{invoice['code']}/{invoice['number']}"
    status, rc, _ = http("POST", confirm + "/credit-confirmations", {"amount": 2260}, as_buyer)
    assert status == 201, rc
    status, note, _ = http(
        "POST", f"{shop.api}/v1/credit-notes", {**credit, "confirmation": rc["confirmation"]}
    )
    assert status == 201 and note["counter"] == 2, note
    shop.wait_synced(2)
    status, state, _ = http("GET", confirm, headers={"Authorization": f"Bearer {_admin(shop)}"})
    assert status == 200 and state["credited"] == 2260, state
    assert [h["event"] for h in state["history"]][-1] == "credited"


def test_unclaimed_invoice_credits_and_a_bad_confirmation_is_the_printers_refusal(
    shop: Shop,
) -> None:
    shop.start_chain()
    shop.start_device()
    shop.start_syncd()
    _, invoice = shop.issue(SALE)
    ref = {"code": invoice["code"], "number": invoice["number"]}
    status, body, _ = http(
        "POST",
        f"{shop.api}/v1/credit-notes",
        {"refers_to": ref, "reason": "x", "confirmation": "rc-not-an-id"},
    )
    assert (status, body["error"]) == (422, "INVALID_INVOICE"), body
    status, note, _ = http("POST", f"{shop.api}/v1/credit-notes", {"refers_to": ref, "reason": "x"})
    assert status == 201, note
    shop.wait_synced(2)


def _admin(shop: Shop) -> str:
    assert shop.chain is not None
    return Path(shop.chain.ready["admin_token_file"]).read_text().strip()


def test_offline_a_credit_of_an_uploaded_invoice_waits_for_the_chain(shop: Shop) -> None:
    """With the chain away syncd cannot know whether an uploaded invoice was claimed:
    it refuses that credit note (503, nothing signed); an invoice not yet uploaded
    cannot have been claimed, so its credit note is issued offline."""
    shop.start_chain()
    shop.start_device()
    shop.start_syncd()
    _, uploaded = shop.issue(SALE)
    shop.wait_synced(1)
    shop.fault("refuse")  # connections refused: the shop is offline
    _, offline = shop.issue(SALE)
    assert offline["counter"] == 2

    def credit(invoice: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        ref = {"code": invoice["code"], "number": invoice["number"]}
        return http("POST", f"{shop.api}/v1/credit-notes", {"refers_to": ref, "reason": "x"})

    status, body, headers = credit(uploaded)
    assert (status, body["error"]) == (503, "CREDIT_CHECK_UNAVAILABLE"), body
    assert headers["Retry-After"] == "30"
    status, note, _ = credit(offline)
    assert status == 201 and note["counter"] == 3, note  # the refused one signed nothing
    shop.clear_faults()
    shop.wait_synced(3)
