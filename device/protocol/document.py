"""The signed document: payload fields, check code, hash chain.

Every document a device signs (invoice, credit note, X report, Z report)
is a COSE_Sign1 over a deterministic CBOR map with these text keys:

    device_id  counter  code  number  kind  issued_at  seller  buyer
    items  amount  tax  total  prev_hash  check_code  offline  training

plus `refers_to` and `reason` for a credit note (and `confirmation`, the
buyer's red-letter confirmation id, when it credits a claimed invoice) and
`report` for X/Z reports. `counter` is gapless over all documents of a device, starting at
1; `prev_hash` is the SHA-256 of the previous document's complete
COSE_Sign1 bytes (32 zero bytes for counter 1).

The check code (校验码, 20 digits, printed and typed in for verification)
is an HMAC-SHA256 of the payload without `check_code`, keyed with a key
derived from the device's signing seed: nobody without the device key can
produce it, it is fixed before the document signature that covers it, and
that signature authenticates it. (It cannot come from the document's own
signature: the signature covers the check code.)
"""

from __future__ import annotations

import datetime
import hashlib
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from device.protocol import codec, cose
from device.protocol.invoice import is_confirmation, is_invoice_code, is_invoice_number
from device.protocol.keys import SIGNATURE_SIZE, KeyPair
from device.protocol.untrusted import shown, shown_keys

ZERO_HASH = bytes(32)
CHECK_CODE_DIGITS = 20
CHECK_CODE_DOMAIN = b"taxctl/check-code/v1\x00"
DEVICE_ID_PATTERN = re.compile(r"TC[0-9A-Z]{12}")


class Kind(StrEnum):
    INVOICE = "invoice"
    CREDIT = "credit"
    X_REPORT = "x_report"
    Z_REPORT = "z_report"


NUMBERED_KINDS = frozenset({Kind.INVOICE, Kind.CREDIT})
BASE_KEYS = frozenset(
    {
        "device_id",
        "counter",
        "code",
        "number",
        "kind",
        "issued_at",
        "seller",
        "buyer",
        "items",
        "amount",
        "tax",
        "total",
        "prev_hash",
        "check_code",
        "offline",
        "training",
    }
)
EXTRA_KEYS: dict[Kind, frozenset[str]] = {
    Kind.INVOICE: frozenset(),
    Kind.CREDIT: frozenset({"refers_to", "reason"}),
    Kind.X_REPORT: frozenset({"report"}),
    Kind.Z_REPORT: frozenset({"report"}),
}


_KINDS = frozenset(k.value for k in Kind)
_KIND_OF = {k.value: k for k in Kind}
_EXPECTED_KEYS = {kind: BASE_KEYS | extra for kind, extra in EXTRA_KEYS.items()}
OPTIONAL_KEYS: dict[Kind, frozenset[str]] = {Kind.CREDIT: frozenset({"confirmation"})}
_WITH_OPTIONAL = {kind: _EXPECTED_KEYS[kind] | extra for kind, extra in OPTIONAL_KEYS.items()}


class DocumentError(ValueError):
    """A byte string that is not a well-formed document."""


def document_hash(raw: bytes) -> bytes:
    return hashlib.sha256(raw).digest()


_last_formatted: tuple[int, str] = (-1, "")


def format_utc(seconds: float) -> str:
    # Every document signed within the same second carries the same text.
    global _last_formatted
    whole = int(seconds)
    last = _last_formatted
    if last[0] != whole:
        last = _last_formatted = (whole, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(whole)))
    return last[1]


# int() reads any digits: ASCII only. The groups are the constructor's arguments.
_UTC = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)Z", re.ASCII)


_EPOCH = datetime.datetime(1970, 1, 1)
_SECOND = datetime.timedelta(seconds=1)


def parse_utc(text: object) -> int:
    if not isinstance(text, str) or (match := _UTC.fullmatch(text)) is None:
        raise ValueError(f"not a UTC time of the form YYYY-MM-DDTHH:MM:SSZ: {shown(text)}")
    try:  # the constructor checks ranges (month 13, 30 February, hour 24 ...)
        year, month, day, hour, minute, second = map(int, match.groups())
        when = datetime.datetime(year, month, day, hour, minute, second)
    except ValueError as exc:
        raise ValueError(f"not a valid time: {text} ({exc})") from None
    return (when - _EPOCH) // _SECOND


_CHECK_CODE_MODULUS = 10**CHECK_CODE_DIGITS


def check_code_from_mac(mac: bytes) -> str:
    return str(int.from_bytes(mac[:9], "big") % _CHECK_CODE_MODULUS).zfill(CHECK_CODE_DIGITS)


_CHECK_CODE_KEY = b"\x6acheck_code\x74"  # text(10) "check_code", then the head of text(20)


def sign_document(key: KeyPair, fields: Mapping[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """Sign a payload (every key but check_code); returns (COSE bytes, full payload)."""
    if "check_code" in fields:
        raise ValueError("check_code is derived, not given")
    if not 1 <= len(fields) < 23:
        raise ValueError("a document payload has 1 to 22 fields besides check_code")
    payload = codec.ordered_map(fields)  # a new dict: the caller's mapping is not changed
    unsigned = codec.encode_ordered(payload)
    check_code = check_code_from_mac(key.check_code_mac(CHECK_CODE_DOMAIN + unsigned))
    if len(next(reversed(payload)).encode()) >= len("check_code"):  # the longest key sorts last
        # A key as long or longer (a credit note's "confirmation") may sort after check_code:
        # encode the whole map in order rather than append check_code to the unsigned bytes.
        payload["check_code"] = check_code
        payload = codec.ordered_map(payload)
        raw = cose.sign1(codec.encode_ordered(payload), key, str(fields["device_id"]).encode())
        return raw, payload
    # "check_code" is the only 10-character key and none is longer, so in
    # deterministic order it always comes last: the signed payload is the
    # unsigned map with one more entry appended (tests compare with cbor2).
    encoded = bytes([unsigned[0] + 1]) + unsigned[1:] + _CHECK_CODE_KEY + check_code.encode()
    payload["check_code"] = check_code
    raw = cose.sign1(encoded, key, str(fields["device_id"]).encode())
    return raw, payload


@dataclass(frozen=True, slots=True)
class Document:
    raw: bytes
    payload: dict[str, Any]
    signature: bytes
    hash: bytes
    envelope: cose.Sign1
    # Read from the payload once at parse time (its shape is checked by then):
    # the chain consults these several times per document.
    device_id: str
    counter: int
    kind: Kind
    code: str | None
    number: str | None

    @property
    def total(self) -> int:
        return int(self.payload["total"])

    @property
    def prev_hash(self) -> bytes:
        return bytes(self.payload["prev_hash"])

    @property
    def check_code(self) -> str:
        return str(self.payload["check_code"])

    @property
    def training(self) -> bool:
        return bool(self.payload["training"])

    def verify(self, public_key: bytes) -> bool:
        return self.envelope.verify(public_key)

    def __reduce__(self) -> tuple[Any, tuple[bytes, dict[str, Any], bytes, int]]:
        # The chain's workers send every checked document back to the event loop:
        # the bytes and the decoded payload cross once, the rest is re-sliced from
        # the bytes (two thirds of the size and time of pickling each field).
        return (_restore, (self.raw, self.payload, self.hash, len(self.envelope.payload)))


def _restore(raw: bytes, payload: dict[str, Any], digest: bytes, payload_size: int) -> Document:
    """A Document from a parsed one's parts; its bytes end with bstr(64) signature."""
    end = len(raw) - 2 - SIGNATURE_SIZE
    envelope = cose.Sign1(
        raw[end - payload_size : end],
        raw[-SIGNATURE_SIZE:],
        payload["device_id"].encode(),
        raw,
    )
    return _document(envelope, payload, digest)


def _document(envelope: cose.Sign1, payload: dict[str, Any], digest: bytes) -> Document:
    return Document(
        envelope.raw,
        payload,
        envelope.signature,
        digest,
        envelope,
        payload["device_id"],
        payload["counter"],
        _KIND_OF[payload["kind"]],
        payload["code"],
        payload["number"],
    )


def parse_document(raw: bytes | bytearray | memoryview) -> Document:
    """Strictly decode a document and check its shape (not its signature)."""
    try:
        envelope = cose.decode_sign1(raw)
        payload = codec.decode_canonical(envelope.payload)
    except (cose.CoseError, codec.CodecError) as exc:
        raise DocumentError(str(exc)) from exc
    check_shape(payload)
    if envelope.kid != payload["device_id"].encode():
        raise DocumentError("COSE key id does not name the document's device")
    return _document(envelope, payload, document_hash(envelope.raw))


def _is_int(value: object) -> bool:
    return type(value) is int


def check_shape(payload: object) -> None:
    """Field presence and types; content rules (totals, numbering) live elsewhere.

    Plain if/raise rather than a helper taking a message: messages are only
    built when something is wrong (this runs for every document the chain sees).
    """
    if type(payload) is not dict:
        raise DocumentError("payload must be a map")
    kind = _check_keys(payload)
    _check_numbering(payload, kind)
    _check_contents(payload)
    if kind == Kind.CREDIT:
        _check_credit(payload)
    elif kind in (Kind.X_REPORT, Kind.Z_REPORT):
        if type(payload["report"]) is not dict:
            raise DocumentError("report must be a map")
        if payload["items"] != []:
            raise DocumentError("a report has no items")


def _check_keys(payload: dict[str, Any]) -> Kind:
    """The document's kind, once its keys are exactly that kind's."""
    kind_text = payload.get("kind")
    # str first: a map or an array is no set member, and asking would raise TypeError
    if type(kind_text) is not str or kind_text not in _KINDS:
        raise DocumentError(f"unknown kind {shown(kind_text)}")
    kind = _KIND_OF[kind_text]  # a lookup: calling the enum costs more
    expected = _EXPECTED_KEYS[kind]
    if payload.keys() != expected and payload.keys() != _WITH_OPTIONAL.get(kind):
        raise DocumentError(
            f"payload keys differ: missing {sorted(expected - payload.keys())}, "
            f"unexpected {shown_keys(payload.keys() - expected)}"
        )
    return kind


def _check_numbering(payload: dict[str, Any], kind: Kind) -> None:
    """Who issued it, where in their chain, under which invoice number, when."""
    device_id = payload["device_id"]
    if type(device_id) is not str or DEVICE_ID_PATTERN.fullmatch(device_id) is None:
        raise DocumentError("device_id must be TC followed by 12 capitals or digits")
    if not _is_int(payload["counter"]) or payload["counter"] < 1:
        raise DocumentError("counter must be an integer >= 1")
    if kind in NUMBERED_KINDS:
        if not (is_invoice_code(payload["code"]) and is_invoice_number(payload["number"])):
            # ASCII digits only: int() would read other scripts' digits as the same
            # number, letting two strings name one invoice number
            raise DocumentError(
                "an invoice or credit note needs a 12-digit code and 8-digit number"
            )
    elif payload["code"] is not None or payload["number"] is not None:
        raise DocumentError("a report has no code/number")
    try:
        parse_utc(payload["issued_at"])
    except ValueError as exc:
        raise DocumentError(f"issued_at: {exc}") from None


def _check_contents(payload: dict[str, Any]) -> None:
    """The parties, the lines and the sums, the link to the previous document, the flags."""
    if type(payload["seller"]) is not dict:
        raise DocumentError("seller must be a map")
    if payload["buyer"] is not None and type(payload["buyer"]) is not dict:
        raise DocumentError("buyer must be a map or null")
    if type(payload["items"]) is not list:
        raise DocumentError("items must be a list")
    amount, tax, total = payload["amount"], payload["tax"], payload["total"]
    if not (_is_int(amount) and _is_int(tax) and _is_int(total)):
        raise DocumentError("amount, tax and total must be integers")
    if total != amount + tax:
        raise DocumentError("total must be amount + tax")
    prev = payload["prev_hash"]
    if type(prev) is not bytes or len(prev) != 32:
        raise DocumentError("prev_hash must be 32 bytes")
    check = payload["check_code"]
    if (
        type(check) is not str
        or len(check) != CHECK_CODE_DIGITS
        or not (check.isascii() and check.isdigit())
    ):
        raise DocumentError("check_code must be 20 digits")
    if type(payload["offline"]) is not bool or type(payload["training"]) is not bool:
        raise DocumentError("offline and training must be booleans")


def _check_credit(payload: dict[str, Any]) -> None:
    ref = payload["refers_to"]
    if (
        type(ref) is not dict
        or ref.keys() != {"code", "number"}
        or not (is_invoice_code(ref["code"]) and is_invoice_number(ref["number"]))
    ):
        raise DocumentError("refers_to needs a 12-digit code and an 8-digit number")
    if type(payload["reason"]) is not str:
        raise DocumentError("reason must be text")
    if "confirmation" in payload and not is_confirmation(payload["confirmation"]):
        raise DocumentError("confirmation must be RC and 16 capital hex digits")
