"""What a receipt's QR code carries: everything a verifier (查验) needs.

    taxctl:v1?c=<invoice code>&n=<number>&d=<YYYY-MM-DD>&t=<total fen>&k=<check code>[&x=1]
              &i=<device id>&h=<document hash>&s=<device signature>

Code and number identify the invoice; date, total and check code are what
verification compares with the chain's copy. `x=1` marks a training
document (never a valid invoice). The same fields can be typed in by hand
on the verification page or given to `taxctl verify`.

`i`, `h` and `s` let 查验 check the issuer before the shop uploads (offline
查验): `s` is the device's Ed25519 signature over QR_DOMAIN followed by the
canonical CBOR of {"c", "n", "d", "t", "h", "i"} (`qr_signed_bytes`); `h` is
the SHA-256 of the signed document, `h` and `s` base64url without padding.
Payloads without them (older receipts) still parse. Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qs, urlencode

from device.protocol import codec, keys
from device.protocol.keys import KeyPair
from device.protocol.untrusted import shown_keys

PREFIX = "taxctl:v1?"
QR_DOMAIN = b"taxctl/qr/v1\x00"
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)  # \d alone matches any script's digits
_DEVICE_ID = re.compile(r"TC[0-9A-Z]{12}")
# ASCII digits only: int() reads "١٦٩٥" as 1695 too, another spelling of a signed total.
_TOTAL = re.compile(r"-?\d{1,13}", re.ASCII)
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_URL_SAFE = re.compile(r"[A-Za-z0-9_.~-]*")
FIELDS = {"c", "n", "d", "t", "k", "x", "i", "h", "s"}


class QrError(ValueError):
    """Text that is not a taxctl verification payload; the message says which part."""


@dataclass(frozen=True, slots=True)
class VerificationQuery:
    code: str
    number: str
    date: str
    check_code: str | None = None  # the full 20 digits or the last 6
    total: int | None = None
    training: bool = False
    device_id: str | None = None
    doc_hash: bytes | None = None  # SHA-256 of the signed document
    signature: bytes | None = None  # the device's, over qr_signed_bytes

    def to_payload(self) -> str:
        fields: dict[str, str] = {"c": self.code, "n": self.number, "d": self.date}
        if self.total is not None:
            fields["t"] = str(self.total)
        if self.check_code is not None:
            fields["k"] = self.check_code
        if self.training:
            fields["x"] = "1"
        if self.device_id is not None:
            fields["i"] = self.device_id
        if self.doc_hash is not None:
            fields["h"] = b64url(self.doc_hash)
        if self.signature is not None:
            fields["s"] = b64url(self.signature)
        # Every value of a real receipt is URL-safe as it is: joined directly, which costs
        # a quarter of urlencode on the printer's per-document path.
        if all(_URL_SAFE.fullmatch(v) for v in fields.values()):
            return PREFIX + "&".join(f"{k}={v}" for k, v in fields.items())
        return PREFIX + urlencode(fields)

    @property
    def signed(self) -> bool:
        """Whether it carries the device's signature (offline 查验 is possible)."""
        return self.signature is not None

    def problem(self) -> str | None:
        """Why this query cannot be asked, or None."""
        if not (len(self.code) == 12 and self.code.isascii() and self.code.isdigit()):
            return "the invoice code is 12 digits"
        if not (len(self.number) == 8 and self.number.isascii() and self.number.isdigit()):
            return "the invoice number is 8 digits"
        if not _DATE.fullmatch(self.date):
            return "the date is YYYY-MM-DD"
        if self.check_code is None and self.total is None:
            return "give the check code (all 20 digits or the last 6) or the total"
        if self.check_code is not None and not (
            self.check_code.isascii()
            and self.check_code.isdigit()
            and len(self.check_code) in (6, 20)
        ):
            return "the check code is 20 digits, or its last 6"
        return self._signature_problem()

    def _signature_problem(self) -> str | None:
        parts = (self.device_id, self.doc_hash, self.signature)
        if all(p is None for p in parts):
            return None
        if any(p is None for p in parts) or self.total is None:
            return "a signed payload has the device id, hash, signature and total (i, h, s, t)"
        if _DEVICE_ID.fullmatch(self.device_id or "") is None:
            return "the device id is TC followed by 12 capitals or digits"
        if len(self.doc_hash or b"") != 32:
            return "the document hash is 32 bytes (43 base64url characters)"
        if len(self.signature or b"") != keys.SIGNATURE_SIZE:
            return "the signature is 64 bytes (86 base64url characters)"
        return None


def for_document(payload: dict[str, Any]) -> VerificationQuery:
    """The query printed on the receipt of a signed invoice or credit note."""
    if payload.get("code") is None:
        raise QrError("a report has no invoice code: nothing to verify")
    return VerificationQuery(
        code=str(payload["code"]),
        number=str(payload["number"]),
        date=str(payload["issued_at"])[:10],
        check_code=str(payload["check_code"]),
        total=int(payload["total"]),
        training=bool(payload.get("training")),
    )


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")


def _unb64url(text: str, size: int, what: str) -> bytes:
    chars = (size * 4 + 2) // 3
    if len(text) != chars or _B64URL.fullmatch(text) is None:
        raise QrError(f"the {what} is {chars} base64url characters")
    try:
        # What urlsafe_b64decode does, without its argument coercion (the pattern
        # above has made `text` ASCII): a third of the cost
        padded = text.encode("ascii").translate(_FROM_URLSAFE) + b"=" * (-len(text) % 4)
        data = binascii.a2b_base64(padded)
    except (binascii.Error, ValueError):
        raise QrError(f"the {what} is not base64url") from None
    if b64url(data) != text:  # one spelling per value: no stray low bits
        raise QrError(f"the {what} is not canonical base64url")
    return data


def qr_signed_bytes(query: VerificationQuery, doc_hash: bytes, device_id: str) -> bytes:
    """What the device signs for the QR: the fields a buyer can compare, bound to one
    document (its hash) and one device."""
    if query.total is None:
        raise QrError("a signed payload needs the total")
    # Built in canonical key order, so the cheaper order-preserving encoder gives the
    # canonical bytes (tests check it against codec.encode).
    fields = {
        "c": query.code,
        "d": query.date,
        "h": doc_hash,
        "i": device_id,
        "n": query.number,
        "t": query.total,
    }
    return QR_DOMAIN + codec.encode_ordered(fields)


def sign_qr(
    query: VerificationQuery, doc_hash: bytes, device_id: str, key: KeyPair
) -> VerificationQuery:
    """`query` with the device's signature (deterministic: a reprint gets the same bytes)."""
    signature = key.sign(qr_signed_bytes(query, doc_hash, device_id))
    return replace(query, device_id=device_id, doc_hash=doc_hash, signature=signature)


def check_qr_signature(query: VerificationQuery, public_key: bytes) -> bool:
    """Whether `query`'s signature is `public_key`'s over its fields; False if unsigned."""
    if query.signature is None or query.doc_hash is None or query.device_id is None:
        return False
    if query.total is None:
        return False
    message = qr_signed_bytes(query, query.doc_hash, query.device_id)
    return keys.verify(public_key, message, query.signature)


def _fields(query: str) -> dict[str, str]:
    """Each field's value; QrError if one appears more than once.

    Read as `parse_qs(query, keep_blank_values=True)` reads it: pairs split on `&`
    (empty ones skipped), the name before the first `=`, a pair without one a blank
    value. Without `%` or `+` nothing is unescaped, so the split is all parse_qs would
    do (a printer's payload never has either; tests compare the two on hostile text).
    """
    if "%" in query or "+" in query:
        fields = parse_qs(query, keep_blank_values=True, strict_parsing=False)
        if any(len(values) != 1 for values in fields.values()):
            raise QrError("each field may appear once")
        return {key: values[0] for key, values in fields.items()}
    one: dict[str, str] = {}
    for pair in query.split("&"):
        if pair:
            name, _, value = pair.partition("=")
            if name in one:
                raise QrError("each field may appear once")
            one[name] = value
    return one


def parse(text: str) -> VerificationQuery:
    text = text.strip()
    if not text.startswith(PREFIX):
        raise QrError(f"a taxctl verification payload starts with {PREFIX!r}")
    one = _fields(text[len(PREFIX) :])
    unknown = set(one) - FIELDS
    if unknown:
        raise QrError(f"unknown fields {shown_keys(unknown)}")
    total: int | None = None
    if "t" in one:
        if _TOTAL.fullmatch(one["t"]) is None:
            raise QrError("the total is a whole number of fen")
        total = int(one["t"])
    query = VerificationQuery(
        code=one.get("c", ""),
        number=one.get("n", ""),
        date=one.get("d", ""),
        check_code=one.get("k"),
        total=total,
        training=one.get("x") == "1",
        device_id=one.get("i"),
        doc_hash=_unb64url(one["h"], 32, "document hash") if "h" in one else None,
        signature=_unb64url(one["s"], keys.SIGNATURE_SIZE, "signature") if "s" in one else None,
    )
    why = query.problem()
    if why:
        raise QrError(why)
    return query


MAX_PAYLOAD_CHARS = 512  # a signed payload is about 250 characters


def _printed(query: VerificationQuery) -> tuple[object, ...]:
    """The fields a receipt prints, in their order (all but device id, hash, signature)."""
    return (
        query.code,
        query.number,
        query.date,
        query.check_code,
        query.total,
        query.training,
    )


def device_payload(
    text: object, payload: dict[str, Any], doc_hash: bytes, public_key: bytes
) -> str | None:
    """A device's `qr` text if it is the signed payload of exactly this document (same
    fields, hash and device, a signature that verifies with `public_key`), else None:
    a receipt never prints a QR that 查验 would call forged."""
    if not isinstance(text, str) or len(text) > MAX_PAYLOAD_CHARS or payload.get("code") is None:
        return None
    try:
        query = parse(text)
        expected = for_document(payload)
    except (QrError, KeyError, TypeError, ValueError):
        return None
    # `expected` is unsigned (for_document): compared field by field as the dataclass
    # compares, without building an unsigned copy of `query` (dataclasses.replace costs
    # more than the comparison).
    if _printed(query) != _printed(expected) or query.doc_hash != doc_hash:
        return None
    if query.device_id != payload.get("device_id") or not check_qr_signature(query, public_key):
        return None
    return text
