"""Refusals stay small and visible whatever they quote; names cannot fake receipt lines."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest

from device.protocol import document, framing, invoice, taxid, trust, untrusted
from device.protocol.invoice import DEFAULT_TAX_RATES, check_text, parse_invoice_request
from device.protocol.status import DeviceError, Status

TEA = {"name": "Tea", "quantity": "2", "unit_price": 1250, "tax_rate_bp": 1300}
HUGE = "\x00\u202e\x85" * 30_000


def small(error: DeviceError) -> None:
    """The error's response body fits a frame many times over and holds nothing invisible."""
    body = cbor2.dumps(error.to_body())
    assert len(body) < 4096 < framing.MAX_BODY
    assert error.detail.isprintable(), error.detail[:80]


def test_device_error_bounds_any_detail_and_info() -> None:
    error = DeviceError(Status.BAD_QUANTITY, HUGE, value=HUGE, raw=b"\0" * 100_000, n=2**200)
    small(error)
    assert len(error.detail) <= 401 and error.detail.startswith("\\x00\\u202e\\x85")
    assert error.info["raw"] == "100000 bytes" and error.info["n"] == "an integer of 201 bits"
    many = DeviceError(Status.INTERNAL_ERROR, **{f"k{i}": i for i in range(1000)})
    assert len(many.info) == 16
    plain = DeviceError(Status.INVALID_INVOICE, "items[0].name must be a non-empty string")
    assert plain.detail == "items[0].name must be a non-empty string"  # the usual case untouched


def test_a_host_bounds_what_a_device_answers_too() -> None:
    error = DeviceError.from_response(
        Status.BAD_REQUEST, {"detail": HUGE, "info": {"x": [HUGE] * 100}}
    )
    small(error)
    assert DeviceError.from_response(Status.BAD_REQUEST, {"detail": [1, 2]}).detail == (
        "a list of 2 items"
    )


@pytest.mark.parametrize(
    "call",
    [
        lambda: invoice.parse_quantity(HUGE),
        lambda: invoice.parse_quantity([HUGE] * 10),
        lambda: parse_invoice_request({"items": [TEA], HUGE: 1}, DEFAULT_TAX_RATES),
        lambda: parse_invoice_request(
            {"items": [TEA], "buyer": {"name": "B", "tax_id": HUGE}}, DEFAULT_TAX_RATES
        ),
        lambda: parse_invoice_request(
            {"items": [TEA], "buyer": {"name": "B", "tax_id": "\u202e" * 18}}, DEFAULT_TAX_RATES
        ),
        lambda: parse_invoice_request(
            {"items": [dict(TEA, tax_rate_bp=10**4000)]}, DEFAULT_TAX_RATES
        ),
        lambda: trust.open_certificate(HUGE.encode(), trust.TRAINING_BUREAU.public_key),
    ],
)
def test_every_sink_quotes_input_bounded(call: Any) -> None:
    with pytest.raises(DeviceError) as err:
        call()
    small(err.value)
    assert "\u202e" not in err.value.detail and "\x00" not in err.value.detail


def test_parse_utc_quotes_its_input_bounded() -> None:
    with pytest.raises(ValueError) as err:
        document.parse_utc(HUGE)
    assert len(str(err.value)) < 400 and str(err.value).isprintable()


def test_a_taxid_cache_holds_only_codes_of_the_right_length() -> None:
    taxid._problem.cache_clear()
    for n in range(100):
        assert taxid.problem("9" * (19 + n)) == f"must be 18 characters, got {19 + n}"
    assert taxid._problem.cache_info().currsize == 0


@pytest.mark.parametrize(
    "body",
    [
        {"items": [TEA], 1: "x", "y": 2},
        {"items": [TEA], "buyer": {1: "x", "name": "B"}},
        {"items": [{**TEA, 2: 1, "z": 0}]},
        {"items": [TEA], b"k": 1, (1, 2): 3},
    ],
)
def test_map_keys_of_mixed_types_are_an_invalid_invoice(body: dict[Any, Any]) -> None:
    """syncd hands decoded JSON and the chain decoded CBOR to the same rules: keys of
    mixed types used to make the message's sorted() raise TypeError."""
    with pytest.raises(DeviceError) as err:
        parse_invoice_request(body, DEFAULT_TAX_RATES)
    assert err.value.status == Status.INVALID_INVOICE
    assert "unknown fields" in err.value.detail


def test_shown_keys_is_bounded() -> None:
    text = untrusted.shown_keys({f"k{i}" for i in range(10_000)} | {1, b"x", None})
    assert len(text) < 200 and text.endswith("and 9998 more")


# --- names ----------------------------------------------------------------------------

REFUSED = [
    ("\x85", "\\x85"),  # NEL, a C1 control
    ("\x9b", "\\x9b"),  # CSI
    ("\u2028", "\\u2028"),  # line separator
    ("\u2029", "\\u2029"),  # paragraph separator
    *[(chr(c), f"\\u{c:04x}") for c in range(0x202A, 0x202F)],  # bidi embeddings, overrides
    *[(chr(c), f"\\u{c:04x}") for c in range(0x2066, 0x206A)],  # bidi isolates
    ("\u200b", "\\u200b"),  # zero-width space
    ("\u200c", "\\u200c"),
    ("\u200d", "\\u200d"),
    ("\u2060", "\\u2060"),  # word joiner
    ("\ufeff", "\\ufeff"),  # byte order mark
    ("\u00ad", "\\xad"),  # soft hyphen
    ("\U000e0041", "\\U000e0041"),  # a tag character
    ("\ue000", "\\ue000"),  # private use
    ("\u0378", "\\u0378"),  # unassigned
    ("\ud800", "\\ud800"),  # a lone surrogate (JSON can carry one)
    ("\x00", "\\x00"),
    ("\n", "\\x0a"),
    ("\x7f", "\\x7f"),
]


@pytest.mark.parametrize(("char", "escaped"), REFUSED)
def test_names_refuse_invisible_and_line_breaking_characters(char: str, escaped: str) -> None:
    with pytest.raises(DeviceError) as err:
        check_text(f"Tea{char}House", "items[3].name")
    assert err.value.status == Status.INVALID_INVOICE
    assert err.value.detail.startswith(f'items[3].name holds "{escaped}" at character 3')
    small(err.value)


@pytest.mark.parametrize("mark", ["\u0301", "\u0903", "\u20dd", "\ufe0f"])
def test_a_name_cannot_start_with_a_combining_mark(mark: str) -> None:
    with pytest.raises(DeviceError) as err:
        check_text(mark + "Tea", "buyer.name")
    assert err.value.status == Status.INVALID_INVOICE
    assert "buyer.name starts with the combining mark" in err.value.detail
    assert check_text("Tea" + mark, "buyer.name") == "Tea" + mark  # after a letter: fine


@pytest.mark.parametrize(
    "name",
    [
        "北京烤鸭店特色套餐饭",
        "Café",
        "Cafe\u0301",
        "株式会社\u3000東京",
        "A\u00a0B",
        "Ølbar №1",
        "😀",
    ],
)
def test_ordinary_names_pass(name: str) -> None:
    assert check_text(name, "items[0].name") == name


def test_every_printed_text_field_is_checked() -> None:
    bad = "Tea\u202eeT"
    rates = DEFAULT_TAX_RATES
    for body in (
        {"items": [dict(TEA, name=bad)]},
        {"items": [TEA], "buyer": {"name": bad}},
    ):
        with pytest.raises(DeviceError, match="holds"):
            parse_invoice_request(body, rates)
    ref = {"code": "144031900111", "number": "00000001"}
    with pytest.raises(DeviceError, match="reason holds"):
        invoice.parse_credit_request({"refers_to": ref, "reason": bad}, rates)
    # The chain re-checks a signed document's lines with the same rule.
    line = invoice.make_line(bad, 1000, 100, 1300).to_payload()
    with pytest.raises(DeviceError, match="holds"):
        invoice.recheck_lines([line], rates, credit=False)


def test_times_are_ascii_digits_only() -> None:
    """int() reads other scripts' digits as the same number: two strings for one time."""
    assert document.parse_utc("2030-01-01T00:00:00Z") == 1893456000
    with pytest.raises(ValueError, match="not a UTC time"):
        document.parse_utc("\u0662\u0660\u0663\u0660-01-01T00:00:00Z")
