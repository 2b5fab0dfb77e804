from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device.protocol import codec, keys, qr
from device.protocol.keys import KeyPair


def test_payload_of_a_document_round_trips() -> None:
    payload = {
        "code": "991295698646",
        "number": "00000001",
        "issued_at": "2026-11-25T08:00:00Z",
        "check_code": "12345678901234567890",
        "total": 1695,
        "training": True,
    }
    query = qr.for_document(payload)
    text = query.to_payload()
    assert text == (
        "taxctl:v1?c=991295698646&n=00000001&d=2026-11-25&t=1695&k=12345678901234567890&x=1"
    )
    assert qr.parse(text) == query


@given(
    st.from_regex(r"[0-9]{12}", fullmatch=True),
    st.from_regex(r"[0-9]{8}", fullmatch=True),
    st.integers(-(10**12), 10**12),
    st.from_regex(r"[0-9]{20}|[0-9]{6}", fullmatch=True),
)
def test_any_query_round_trips(code: str, number: str, total: int, check: str) -> None:
    query = qr.VerificationQuery(code, number, "2026-01-31", check, total)
    assert qr.parse(query.to_payload()) == query


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("hello", "starts with"),
        ("taxctl:v1?c=1&n=00000001&d=2026-11-25&k=123456", "12 digits"),
        ("taxctl:v1?c=991295698646&n=1&d=2026-11-25&k=123456", "8 digits"),
        ("taxctl:v1?c=991295698646&n=00000001&d=25/11/2026&k=123456", "YYYY-MM-DD"),
        ("taxctl:v1?c=991295698646&n=00000001&d=2026-11-25", "check code"),
        ("taxctl:v1?c=991295698646&n=00000001&d=2026-11-25&k=12345", "last 6"),
        ("taxctl:v1?c=991295698646&n=00000001&d=2026-11-25&t=1.5", "whole number"),
        ("taxctl:v1?c=991295698646&n=00000001&d=2026-11-25&k=123456&z=1", "unknown"),
        ("taxctl:v1?c=991295698646&c=991295698647&n=00000001&d=2026-11-25&k=123456", "once"),
    ],
)
def test_bad_payloads_say_what_is_wrong(text: str, why: str) -> None:
    with pytest.raises(qr.QrError, match=why):
        qr.parse(text)


def test_reports_have_nothing_to_verify() -> None:
    with pytest.raises(qr.QrError, match="report"):
        qr.for_document({"code": None})


def test_digits_of_other_scripts_are_not_digits_here() -> None:
    query = qr.VerificationQuery("000000000000", "00000000", "2026-01-01", "\u0660" * 6)
    assert query.problem() is not None


KEY = KeyPair.derive("test printer")
DEVICE_ID = "TC0123456789AB"
DOC_HASH = bytes(range(32))
SIGNED_PAYLOAD = {
    "code": "991295698646",
    "number": "00000001",
    "issued_at": "2026-11-25T08:00:00Z",
    "check_code": "12345678901234567890",
    "total": 1695,
    "training": False,
    "device_id": DEVICE_ID,
}


def signed_query() -> qr.VerificationQuery:
    return qr.sign_qr(qr.for_document(SIGNED_PAYLOAD), DOC_HASH, DEVICE_ID, KEY)


def test_a_signed_payload_round_trips_and_verifies() -> None:
    query = signed_query()
    text = query.to_payload()
    assert "&i=TC0123456789AB&h=" in text and len(text) < qr.MAX_PAYLOAD_CHARS
    parsed = qr.parse(text)
    assert parsed == query and parsed.signed
    assert qr.check_qr_signature(parsed, KEY.public_key)
    assert not qr.check_qr_signature(parsed, KeyPair.derive("another").public_key)
    assert qr.sign_qr(qr.for_document(SIGNED_PAYLOAD), DOC_HASH, DEVICE_ID, KEY) == query
    signed = qr.QR_DOMAIN + codec.encode(
        {"c": "991295698646", "n": "00000001", "d": "2026-11-25", "t": 1695, "h": DOC_HASH}
        | {"i": DEVICE_ID}
    )
    assert qr.qr_signed_bytes(query, DOC_HASH, DEVICE_ID) == signed
    assert keys.verify(KEY.public_key, signed, bytes(query.signature or b""))


@pytest.mark.parametrize("field", ["c", "n", "d", "t", "h", "i"])
def test_changing_a_signed_field_breaks_the_signature(field: str) -> None:
    query = signed_query()
    changed = {
        "c": replace(query, code="991295698647"),
        "n": replace(query, number="00000002"),
        "d": replace(query, date="2026-11-26"),
        "t": replace(query, total=169500),
        "h": replace(query, doc_hash=bytes(32)),
        "i": replace(query, device_id="TC0123456789AC"),
    }[field]
    assert not qr.check_qr_signature(qr.parse(changed.to_payload()), KEY.public_key)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda t: t.replace("&s=", "&s=A"), "86 base64url"),
        (lambda t: t.replace("&h=", "&h=A"), "43 base64url"),
        (lambda t: t.rsplit("&s=", 1)[0], "signature"),
        (lambda t: t.replace("&i=TC0123456789AB", "&i=tc1"), "device id"),
        (lambda t: t.replace("&t=1695", ""), "total"),
    ],
)
def test_malformed_signed_fields_are_refused(change: Any, why: str) -> None:
    with pytest.raises(qr.QrError, match=why):
        qr.parse(change(signed_query().to_payload()))


def test_device_payload_takes_only_the_qr_of_this_document() -> None:
    text = signed_query().to_payload()
    assert qr.device_payload(text, SIGNED_PAYLOAD, DOC_HASH, KEY.public_key) == text
    other = KeyPair.derive("another").public_key
    for bad in [
        qr.device_payload(text, SIGNED_PAYLOAD, bytes(32), KEY.public_key),
        qr.device_payload(text, SIGNED_PAYLOAD | {"total": 1}, DOC_HASH, KEY.public_key),
        qr.device_payload(text, SIGNED_PAYLOAD, DOC_HASH, other),
        qr.device_payload(text + "x" * 600, SIGNED_PAYLOAD, DOC_HASH, KEY.public_key),
        qr.device_payload(None, SIGNED_PAYLOAD, DOC_HASH, KEY.public_key),
        qr.device_payload(b"taxctl", SIGNED_PAYLOAD, DOC_HASH, KEY.public_key),
    ]:
        assert bad is None


ARABIC_INDIC = str.maketrans("0123456789", "".join(chr(0x660 + d) for d in range(10)))


@pytest.mark.parametrize("field", ["t", "d"])
def test_a_total_or_date_in_other_scripts_digits_is_refused(field: str) -> None:
    # int() reads "١٦٩٥" as 1695: the signed payload spelled another way verified with the
    # same signature (the total is signed as a number), so a printed QR had two texts
    signed = signed_query().to_payload()
    fields = dict(pair.split("=", 1) for pair in signed[len(qr.PREFIX) :].split("&"))
    fields[field] = fields[field].translate(ARABIC_INDIC)
    respelled = qr.PREFIX + "&".join(f"{k}={v}" for k, v in fields.items())
    with pytest.raises(qr.QrError, match="whole number of fen" if field == "t" else "YYYY-MM-DD"):
        qr.parse(respelled)
    assert qr.device_payload(respelled, SIGNED_PAYLOAD, DOC_HASH, KEY.public_key) is None
    assert qr.device_payload(signed, SIGNED_PAYLOAD, DOC_HASH, KEY.public_key) == signed
