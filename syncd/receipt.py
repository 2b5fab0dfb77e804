"""A signed document as the POS shows it: receipt text and the verification QR payload.

The layout is the printer's own (`device/render.py`: seller, buyer, lines,
totals, check code, and the training banner on training documents), so
what the till shows matches what the printer prints. The QR payload is the
verification query of `device/protocol/qr.py`:

    taxctl:v1?c=<12-digit code>&n=<8-digit number>&d=<YYYY-MM-DD>&t=<total fen>&k=<check code>[&x=1]

which carries everything a verifier (查验) needs: code, number, date, total
and the 20-digit check code; `x=1` marks a training document. The printer
adds `&i=<device id>&h=<document hash>&s=<its signature>` (its response's
`qr`), so a buyer can check the issuer before the shop uploads; that text is
used as it came once it is checked against the document, else the unsigned
payload is built here. Reports (X/Z)
have no code or number and so no QR payload. Other renderings (ESC/POS,
SVG, PNG) start from `Rendered.payload` with `device.render`.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from device import render
from device.protocol import codec, qr
from device.protocol.document import Document

DEFAULT_PAPER = 80


@dataclass(frozen=True)
class Rendered:
    payload: dict[str, Any]
    text: str
    qr: str | None

    def as_json(self) -> dict[str, Any]:
        return {"text": self.text, "qr": self.qr}


def render_receipt(
    payload: dict[str, Any], paper: int = DEFAULT_PAPER, qr_text: str | None = None
) -> Rendered:
    if paper not in render.PAPER_COLUMNS:
        raise ValueError(f"paper width is one of {sorted(render.PAPER_COLUMNS)} mm")
    text = render.text(payload, paper, qr_text)
    code = render.Receipt(payload, qr_text).verification
    return Rendered(payload, text, code)


def document_json(
    document: Document,
    response: dict[str, Any],
    paper: int = DEFAULT_PAPER,
    public_key: bytes = b"",
) -> dict[str, Any]:
    """What the POS API returns for a signed document; with the device's `public_key`, the
    receipt carries the device's signed QR payload from `response`."""
    signed = qr.device_payload(response.get("qr"), document.payload, document.hash, public_key)
    rendered = render_receipt(document.payload, paper, signed)
    out: dict[str, Any] = {
        "device_id": document.device_id,
        "counter": document.counter,
        "kind": document.kind.value,
        "code": document.code,
        "number": document.number,
        "issued_at": document.payload["issued_at"],
        "total": document.total,
        "check_code": document.check_code,
        "training": document.training,
        "offline": bool(document.payload.get("offline")),
        "cose_sign1": base64.b64encode(document.raw).decode(),
        "document": codec.json_view(document.payload),
        "receipt": rendered.as_json(),
    }
    if "synced" in response:
        out["synced"] = bool(response["synced"])
    return out
