from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device.protocol import invoice
from device.protocol.invoice import DEFAULT_TAX_RATES, make_line, parse_invoice_request
from device.protocol.status import DeviceError, Status


@given(st.integers(-(10**15), 10**15), st.integers(1, 10**6))
def test_round_half_up_matches_decimal(numerator: int, denominator: int) -> None:
    expected = (Decimal(numerator) / Decimal(denominator)).quantize(
        Decimal(1), rounding=ROUND_HALF_UP
    )
    assert invoice.round_half_up(numerator, denominator) == int(expected)


def test_half_rounds_up_per_line() -> None:
    line = make_line("x", 1500, 333, 1300)  # 1.5 × 3.33 = 4.995 → 5.00 yuan
    assert line.amount == 500
    assert line.tax == 65  # 500 × 13 % = 65.0
    half = make_line("y", 1000, 5, 1000)  # tax 0.5 fen → 1 fen
    assert half.tax == 1


@given(
    st.integers(1, 999_999_999), st.integers(1, 10**8), st.sampled_from(sorted(DEFAULT_TAX_RATES))
)
def test_credit_line_is_exact_negation(milli: int, price: int, rate: int) -> None:
    line = make_line("x", milli, price, rate)
    credit = make_line("x", -milli, price, rate)
    assert (credit.amount, credit.tax) == (-line.amount, -line.tax)


@pytest.mark.parametrize(
    ("text", "milli"), [("1", 1000), ("1.5", 1500), ("0.001", 1), ("1.50", 1500), ("12.345", 12345)]
)
def test_quantities(text: str, milli: int) -> None:
    assert invoice.parse_quantity(text) == milli
    assert invoice.parse_quantity(invoice.format_quantity(milli)) == milli


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("0", Status.BAD_QUANTITY),
        ("1.2345", Status.BAD_QUANTITY),
        ("1e3", Status.BAD_QUANTITY),
        ("01", Status.BAD_QUANTITY),
        (" 1", Status.BAD_QUANTITY),
        (1.5, Status.BAD_QUANTITY),
        ("-1", Status.NEGATIVE_AMOUNT),
        ("9999999", Status.AMOUNT_TOO_LARGE),
    ],
)
def test_bad_quantities(text: object, status: Status) -> None:
    with pytest.raises(DeviceError) as err:
        invoice.parse_quantity(text)
    assert err.value.status == status


def _item(**over: object) -> dict[str, object]:
    item: dict[str, object] = {
        "name": "Tea",
        "quantity": "2",
        "unit_price": 1250,
        "tax_rate_bp": 1300,
    }
    item.update(over)
    return item


def test_request_totals_add_up() -> None:
    req = parse_invoice_request(
        {
            "buyer": {"name": "ACME", "tax_id": "91350100M000100Y43"},
            "items": [_item(), _item(quantity="0.333", unit_price=999, tax_rate_bp=600)],
        },
        DEFAULT_TAX_RATES,
    )
    t = invoice.totals(req.lines)
    assert t.amount == 2500 + 333
    assert t.tax == 325 + 20
    assert t.total == t.amount + t.tax


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"items": []}, Status.TOO_MANY_ITEMS),
        ({"items": [_item()] * 101}, Status.TOO_MANY_ITEMS),
        ({"items": [_item(tax_rate_bp=1700)]}, Status.UNKNOWN_TAX_RATE),
        ({"items": [_item(unit_price=-5)]}, Status.NEGATIVE_AMOUNT),
        ({"items": [_item(unit_price=0)]}, Status.NEGATIVE_AMOUNT),
        ({"items": [_item(unit_price=1.5)]}, Status.INVALID_INVOICE),
        ({"items": [_item(name="x" * 101)]}, Status.FIELD_TOO_LONG),
        ({"items": [_item(name="")]}, Status.INVALID_INVOICE),
        ({"items": [_item(extra=1)]}, Status.INVALID_INVOICE),
        ({"items": [_item(unit_price=invoice.MAX_UNIT_PRICE + 1)]}, Status.AMOUNT_TOO_LARGE),
        (
            {"items": [_item(quantity="999999", unit_price=invoice.MAX_UNIT_PRICE)]},
            Status.AMOUNT_TOO_LARGE,
        ),
        (
            {"buyer": {"name": "B", "tax_id": "91350100M000100Y44"}, "items": [_item()]},
            Status.INVALID_TAX_ID,
        ),
        ({"buyer": "B", "items": [_item()]}, Status.INVALID_INVOICE),
        ({"items": [_item()], "total": 5}, Status.INVALID_INVOICE),
        ([1, 2], Status.BAD_REQUEST),
    ],
)
def test_invalid_requests(body: object, status: Status) -> None:
    with pytest.raises(DeviceError) as err:
        parse_invoice_request(body, DEFAULT_TAX_RATES)
    assert err.value.status == status


def test_recheck_catches_wrong_rounding_and_noncanonical_lines() -> None:
    line = make_line("Tea", 1500, 333, 1300)
    good = [line.to_payload()]
    assert invoice.recheck_lines(good, DEFAULT_TAX_RATES, credit=False).total == 565
    bad = [dict(line.to_payload(), tax=line.tax + 1)]
    with pytest.raises(DeviceError, match="should be"):
        invoice.recheck_lines(bad, DEFAULT_TAX_RATES, credit=False)
    odd = [dict(line.to_payload(), quantity="1.50")]
    with pytest.raises(DeviceError, match="canonical"):
        invoice.recheck_lines(odd, DEFAULT_TAX_RATES, credit=False)
    credit = [make_line("Tea", -1500, 333, 1300).to_payload()]
    assert invoice.recheck_lines(credit, DEFAULT_TAX_RATES, credit=True).total == -565
    with pytest.raises(DeviceError):
        invoice.recheck_lines(good, DEFAULT_TAX_RATES, credit=True)


def test_credit_request_confirmation_is_optional_and_of_one_form() -> None:
    base = {"refers_to": {"code": "0" * 12, "number": "0" * 8}, "reason": "returned"}
    assert invoice.parse_credit_request(base, DEFAULT_TAX_RATES).confirmation is None
    given = dict(base, confirmation="RC0123456789ABCDEF")
    assert (
        invoice.parse_credit_request(given, DEFAULT_TAX_RATES).confirmation == given["confirmation"]
    )
    for bad in ("rc0123456789abcdef", "RC0123456789ABCDE\u0664", "RC" + "F" * 17, 12, ""):
        with pytest.raises(DeviceError) as caught:
            invoice.parse_credit_request(dict(base, confirmation=bad), DEFAULT_TAX_RATES)
        assert caught.value.status == Status.INVALID_INVOICE
