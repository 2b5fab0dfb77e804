from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device.protocol import qr


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
