"""查验: what the public may learn about an invoice from the receipt in their hand.

The question needs code, number, date and the last 6 check-code digits (or
the total): what is printed on the receipt. The answer holds only what the
receipt shows (code, number, date, seller, total, kind, device) plus the
state (result, claimed, credited): never the check code, the buyer or the
lines, which are the seller's and buyer's business (hostsim/chain/roles.py).

Results:
- `authentic`: on the chain and the fields match;
- `mismatch`: on the chain, but a field differs (`mismatched` names which);
- `not_yet_uploaded`: not on the chain, and the QR's signature verifies with
  a registered device's key (offline 查验): genuine, and the shop must upload
  it by `upload_by`;
- `forged`: not on the chain, and the QR carries a signature that does not
  verify, or names a device the chain does not know or has revoked;
- `not_found`: not on the chain and nothing signed to check.
"""

from __future__ import annotations

import calendar
import datetime
import hmac
import re
from typing import Any

from device.limits import DEFAULT_OFFLINE_SECONDS
from device.protocol import qr
from device.protocol.document import format_utc, parse_document
from hostsim.chain.errors import ChainError, Code
from hostsim.chain.node import Chain

MAX_PAYLOAD_CHARS = qr.MAX_PAYLOAD_CHARS
# The printer refuses to issue past 72 h offline (device/limits.py): by then it must upload.
UPLOAD_WITHIN = DEFAULT_OFFLINE_SECONDS
DAY = 86_400


def invoice_state(row: dict[str, Any]) -> str:
    if row["kind"] != "invoice":
        return row["kind"]
    if row["credited"] >= row["total"] > 0:
        return "credited"
    if row["credited"]:
        return "partially_credited"
    return "issued"


def seller_view(taxpayer: Any) -> dict[str, Any]:
    """The seller as the receipt prints it: name and tax id, nothing else."""
    party = taxpayer if isinstance(taxpayer, dict) else {}
    return {"name": party.get("name"), "tax_id": party.get("tax_id")}


def verification(chain: Chain, query: qr.VerificationQuery, now: float) -> dict[str, Any]:
    row = chain.ledger.invoice(query.code, query.number)
    if row is None:
        return _not_on_chain(chain, query, now)
    mismatched = []
    if row["issued_at"][:10] != query.date:
        mismatched.append("date")
    if query.check_code is not None and not hmac.compare_digest(
        row["check_code"][-len(query.check_code) :], query.check_code
    ):
        mismatched.append("check_code")
    if query.total is not None and row["total"] != query.total:
        mismatched.append("total")
    if query.doc_hash is not None and bytes(row["hash"]) != query.doc_hash:
        mismatched.append("hash")
    out: dict[str, Any] = {
        "result": "mismatch" if mismatched else "authentic",
        "code": query.code,
        "number": query.number,
        "training": bool(row["training"]),
    }
    if mismatched:
        out["mismatched"] = mismatched
        return out
    tx = chain.ledger.tx(bytes(row["hash"]))
    out.update(
        kind=row["kind"],
        state=invoice_state(row),
        issued_at=row["issued_at"],
        total=row["total"],
        credited=row["credited"],
        device_id=row["device_id"],
        seller=seller_view(parse_document(tx.body).payload["seller"]) if tx else None,
        height=tx.height if tx else None,
        claimed=row["claimed_by"] is not None,
    )
    return out


def upload_by(date: str) -> str | None:
    """The latest time the shop must upload a document printed on `date` (UTC): the
    receipt shows the day, so the bound is counted from that day's end. None for a
    date that is not on the calendar."""
    try:
        day = datetime.date.fromisoformat(date)
    except ValueError:
        return None
    start = calendar.timegm(day.timetuple())
    return format_utc(start + DAY + UPLOAD_WITHIN)


def _not_on_chain(chain: Chain, query: qr.VerificationQuery, now: float) -> dict[str, Any]:
    base: dict[str, Any] = {"code": query.code, "number": query.number, "training": query.training}
    if not query.signed:
        return {"result": "not_found", **base}
    assert query.device_id is not None
    record = chain.engine.state.devices.get(query.device_id)
    if record is None:
        return {"result": "forged", **base, "reason": "the QR names a device unknown here"}
    if not qr.check_qr_signature(query, record.public_key):
        return {"result": "forged", **base, "reason": "the QR's signature does not verify"}
    if record.revoked_height is not None:
        return {"result": "forged", **base, "reason": "the QR's device is revoked"}
    deadline = upload_by(query.date)
    if deadline is None:  # a device signs its own clock's date: a bad one is not its
        return {"result": "forged", **base, "reason": "the QR's date is not a calendar date"}
    return {
        "result": "not_yet_uploaded",
        **base,
        "date": query.date,
        "total": query.total,
        "device_id": query.device_id,
        "seller": seller_view(record.certificate.taxpayer),
        "upload_by": deadline,
        "overdue": format_utc(int(now)) > deadline,
    }


def query_from(fields: dict[str, Any]) -> qr.VerificationQuery:
    """The question from a JSON body or a query string (long field names)."""
    if "payload" in fields:
        payload = fields["payload"]
        # qr.parse's refusals name unknown fields, so an unbounded payload would be echoed.
        if not isinstance(payload, str) or len(payload) > MAX_PAYLOAD_CHARS:
            raise ChainError(
                Code.BAD_REQUEST,
                f"payload is the text of a receipt's QR code (at most {MAX_PAYLOAD_CHARS}"
                " characters)",
            )
        try:
            return qr.parse(payload)
        except qr.QrError as exc:
            raise ChainError(Code.BAD_REQUEST, str(exc)) from None
    total = fields.get("total")
    if total is not None and type(total) is not int:
        if isinstance(total, str) and re.fullmatch(r"-?\d{1,13}", total, re.ASCII):
            total = int(total)
        else:
            raise ChainError(Code.BAD_REQUEST, "total is a whole number of fen")
    check = fields.get("check_code")
    query = qr.VerificationQuery(
        code=str(fields.get("code", "")),
        number=str(fields.get("number", "")),
        date=str(fields.get("date", "")),
        check_code=None if check is None else str(check),
        total=total,
    )
    problem = query.problem()
    if problem is not None:
        raise ChainError(Code.BAD_REQUEST, problem)
    return query
