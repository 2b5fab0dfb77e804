"""Invoice content rules: parsing a request, rounding, totals.

Money is integer fen, tax rates integer basis points, quantities decimal
strings with at most three places (held as integer thousandths). Never a
float. Each line's tax-exclusive amount is quantity × unit price rounded
half-up to the fen, its tax is amount × rate rounded half-up, and the
document totals are the exact sums of the lines. Credit notes carry
negative quantities and amounts; rounding is symmetric (half away from
zero), so crediting a line in full gives exactly its negation.

The device uses this to build documents and the chain to re-check them:
pure functions, no I/O.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from device.protocol import taxid
from device.protocol.status import DeviceError, Status
from device.protocol.untrusted import shown, shown_keys

DEFAULT_TAX_RATES: frozenset[int] = frozenset({1300, 900, 600, 300, 0})

MAX_ITEMS = 100
MAX_NAME_CHARS = 100
MAX_REASON_CHARS = 200
MAX_QUANTITY_MILLI = 1_000_000_000  # one million units
MAX_UNIT_PRICE = 10_000_000_000  # 100 million yuan, in fen
MAX_TOTAL = 1_000_000_000_000  # 10 billion yuan, in fen

# Characters a name may not hold anywhere: controls (C0, DEL, C1 such as U+0085 NEL),
# format characters (bidi overrides and isolates, zero-width space/joiners, soft hyphen,
# BOM, tags), line and paragraph separators: each can move, hide or break a printed
# line, so a signed name could fake receipt lines. Surrogates are not text; private
# use has no agreed glyph; unassigned code points may be assigned later as anything,
# and refusing them keeps what a device accepts inside what a newer Unicode accepts.
REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})
# A buyer's red-letter confirmation id, as the chain issues it: a credit note against an
# invoice its buyer has claimed must name one (the chain checks it; the device signs it in).
CONFIRMATION = re.compile(r"RC[0-9A-F]{16}", re.ASCII)
_QUANTITY = re.compile(r"(-?)(0|[1-9][0-9]{0,6})(?:\.([0-9]{1,3}))?")


def round_half_up(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded to the nearest integer, halves away from zero."""
    if denominator <= 0:
        raise ValueError("denominator must be positive")
    if numerator < 0:
        return -((-numerator * 2 + denominator) // (2 * denominator))
    return (numerator * 2 + denominator) // (2 * denominator)


def parse_quantity(text: object, *, negative: bool = False) -> int:
    """A quantity string as integer thousandths; the sign must match `negative`."""
    if not isinstance(text, str):
        raise DeviceError(
            Status.BAD_QUANTITY, f"quantity must be a decimal string, got {shown(text)}"
        )
    match = _QUANTITY.fullmatch(text)
    if match is None:
        raise DeviceError(Status.BAD_QUANTITY, f"quantity {shown(text)}")
    sign, whole, fraction = match.groups()
    milli = int(whole) * 1000 + int((fraction or "").ljust(3, "0"))
    if milli == 0:
        raise DeviceError(Status.BAD_QUANTITY, f"quantity {shown(text)} is zero")
    if bool(sign) != negative:
        if negative:
            raise DeviceError(
                Status.BAD_QUANTITY, f"credit quantity {shown(text)} must be negative"
            )
        raise DeviceError(Status.NEGATIVE_AMOUNT, f"quantity {shown(text)}")
    if milli > MAX_QUANTITY_MILLI:
        raise DeviceError(Status.AMOUNT_TOO_LARGE, f"quantity {shown(text)}")
    return -milli if negative else milli


def format_quantity(milli: int) -> str:
    """The canonical string of a quantity in thousandths (no trailing zeros)."""
    sign = "-" if milli < 0 else ""
    whole, frac = divmod(abs(milli), 1000)
    if frac == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}." + f"{frac:03d}".rstrip("0")


def check_text(value: object, what: str, limit: int = MAX_NAME_CHARS) -> str:
    """A printed text field (a name, a reason): non-empty, at most `limit` characters,
    nothing invisible or line-breaking, not starting with a combining mark. Pure."""
    if not isinstance(value, str) or not value.strip():
        raise DeviceError(Status.INVALID_INVOICE, f"{what} must be a non-empty string")
    if len(value) > limit:
        raise DeviceError(Status.FIELD_TOO_LONG, f"{what} is {len(value)} characters, max {limit}")
    # isprintable() (in C) is false for every refused category and for spaces other than
    # U+0020, so the usual name costs one pass and one lookup; only a name with such a
    # space, or with a refused character, is looked at character by character.
    if not value.isprintable():
        for position, char in enumerate(value):
            if unicodedata.category(char) in REFUSED_CATEGORIES:
                raise DeviceError(
                    Status.INVALID_INVOICE,
                    f"{what} holds {shown(char)} at character {position}: control, format "
                    "and separator characters are not allowed",
                )
    if value[0] >= "\u0300" and unicodedata.category(value[0])[0] == "M":  # none lies lower
        raise DeviceError(
            Status.INVALID_INVOICE, f"{what} starts with the combining mark {shown(value[0])}"
        )
    return value


def check_tax_id(value: object, what: str) -> str:
    why = taxid.problem(value)
    if why is not None:
        raise DeviceError(Status.INVALID_TAX_ID, f"{what}: {why}")
    assert isinstance(value, str)
    return value


@dataclass(slots=True)
class Line:
    name: str
    quantity_milli: int
    unit_price: int
    tax_rate_bp: int
    amount: int
    tax: int

    def to_payload(self) -> dict[str, Any]:
        # Keys in deterministic encoding order (see codec.ordered_map).
        return {
            "tax": self.tax,
            "name": self.name,
            "amount": self.amount,
            "quantity": format_quantity(self.quantity_milli),
            "unit_price": self.unit_price,
            "tax_rate_bp": self.tax_rate_bp,
        }

    @classmethod
    def of(cls, name: str, quantity: str, unit_price: int, tax_rate_bp: int) -> Line:
        """A line as a till writes it: `Line.of("Tea", "1.5", 1000, 1300)` is 1.5 units at
        10.00 yuan and 13 %; amount and tax are computed as the device computes them.
        A quantity that is not a decimal with at most 3 places is refused here."""
        return make_line(name, parse_quantity(quantity), unit_price, tax_rate_bp)

    def to_item(self) -> dict[str, Any]:
        """The line as a request carries it. The wire quantity is unsigned: a credit
        note's lines are negated by the device, so a negated line is sent as positive."""
        return {
            "name": self.name,
            "quantity": format_quantity(abs(self.quantity_milli)),
            "unit_price": self.unit_price,
            "tax_rate_bp": self.tax_rate_bp,
        }


def make_line(name: str, quantity_milli: int, unit_price: int, tax_rate_bp: int) -> Line:
    amount = round_half_up(quantity_milli * unit_price, 1000)
    tax = round_half_up(amount * tax_rate_bp, 10_000)
    return Line(name, quantity_milli, unit_price, tax_rate_bp, amount, tax)


_ITEM_KEYS = frozenset({"name", "quantity", "unit_price", "tax_rate_bp"})


def parse_item(item: object, index: int, rates: frozenset[int], *, credit: bool = False) -> Line:
    """One request line (positive quantity); for a credit note the line is negated."""
    if not isinstance(item, dict):
        raise DeviceError(Status.INVALID_INVOICE, f"items[{index}] must be a map")
    if not item.keys() <= _ITEM_KEYS:
        unknown = shown_keys(item.keys() - _ITEM_KEYS)
        raise DeviceError(Status.INVALID_INVOICE, f"items[{index}] has unknown fields {unknown}")
    return _line(
        item.get("name"),
        item.get("quantity"),
        item.get("unit_price"),
        item.get("tax_rate_bp"),
        index,
        rates,
        credit,
    )


def _line(
    name: object,
    quantity: object,
    price: object,
    rate: object,
    index: int,
    rates: frozenset[int],
    credit: bool,
) -> Line:
    """A line from its four given fields, each checked (the quantity unsigned)."""
    name = check_text(name, f"items[{index}].name")
    milli = parse_quantity(quantity)
    if type(price) is not int:  # bool is an int subclass; a price is never true/false
        raise DeviceError(Status.INVALID_INVOICE, f"items[{index}].unit_price must be integer fen")
    if price <= 0:
        raise DeviceError(Status.NEGATIVE_AMOUNT, f"items[{index}].unit_price is {shown(price)}")
    if price > MAX_UNIT_PRICE:
        raise DeviceError(Status.AMOUNT_TOO_LARGE, f"items[{index}].unit_price is {shown(price)}")
    if type(rate) is not int:
        raise DeviceError(Status.UNKNOWN_TAX_RATE, f"items[{index}].tax_rate_bp must be an integer")
    if rate not in rates:
        raise DeviceError(
            Status.UNKNOWN_TAX_RATE,
            f"items[{index}].tax_rate_bp {shown(rate)} not in {sorted(rates)}",
        )
    return make_line(name, -milli if credit else milli, price, rate)


def parse_items(items: object, rates: frozenset[int], *, credit: bool = False) -> list[Line]:
    if not isinstance(items, list) or not items:
        raise DeviceError(Status.TOO_MANY_ITEMS, "items must be a non-empty list")
    if len(items) > MAX_ITEMS:
        raise DeviceError(Status.TOO_MANY_ITEMS, f"{len(items)} lines, max {MAX_ITEMS}")
    lines = [parse_item(item, i, rates, credit=credit) for i, item in enumerate(items)]
    check_total_size(lines)
    return lines


@dataclass(slots=True)
class Totals:
    amount: int
    tax: int

    @property
    def total(self) -> int:
        return self.amount + self.tax


def totals(lines: Iterable[Line]) -> Totals:
    amount = tax = 0
    for line in lines:
        amount += line.amount
        tax += line.tax
    return Totals(amount, tax)


def check_total_size(lines: list[Line]) -> None:
    total = totals(lines).total
    if abs(total) > MAX_TOTAL:
        raise DeviceError(Status.AMOUNT_TOO_LARGE, f"total {total} fen, max {MAX_TOTAL}")


def parse_party(value: object, what: str, *, tax_id_required: bool) -> dict[str, str] | None:
    if value is None and not tax_id_required:
        return None
    if not isinstance(value, Mapping):
        raise DeviceError(Status.INVALID_INVOICE, f"{what} must be a map")
    unknown = set(value) - {"name", "tax_id"}
    if unknown:
        raise DeviceError(
            Status.INVALID_INVOICE, f"{what} has unknown fields {shown_keys(unknown)}"
        )
    party = {"name": check_text(value.get("name"), f"{what}.name")}
    if value.get("tax_id") is not None or tax_id_required:
        party["tax_id"] = check_tax_id(value.get("tax_id"), f"{what}.tax_id")
    return party


@dataclass(slots=True)
class InvoiceRequest:
    """An ISSUE request: the buyer (`{"name", "tax_id"?}`, or None) and 1-100 lines."""

    buyer: dict[str, str] | None
    lines: list[Line]

    def to_body(self) -> dict[str, Any]:
        """The ISSUE body; the same request gives the same bytes, so that sending it again
        with the same request id is a repeat, never REQUEST_ID_REUSED."""
        body: dict[str, Any] = {"items": [line.to_item() for line in self.lines]}
        if self.buyer is not None:
            body["buyer"] = dict(self.buyer)
        return body


def parse_invoice_request(body: object, rates: frozenset[int]) -> InvoiceRequest:
    """Validate an ISSUE request: {"buyer": {...}?, "items": [...]}."""
    if not isinstance(body, Mapping):
        raise DeviceError(Status.BAD_REQUEST, "invoice request must be a map")
    unknown = set(body) - {"buyer", "items"}
    if unknown:
        raise DeviceError(Status.INVALID_INVOICE, f"unknown fields {shown_keys(unknown)}")
    buyer = parse_party(body.get("buyer"), "buyer", tax_id_required=False)
    return InvoiceRequest(buyer, parse_items(body.get("items"), rates))


@dataclass(frozen=True, slots=True)
class CreditRequest:
    code: str
    number: str
    reason: str
    lines: list[Line] | None  # None: credit the original in full
    confirmation: str | None = None  # the buyer's red-letter confirmation id, if given

    def to_body(self) -> dict[str, Any]:
        """The CREDIT body (`refers_to` the original's code and number)."""
        body: dict[str, Any] = {
            "refers_to": {"code": self.code, "number": self.number},
            "reason": self.reason,
        }
        if self.lines is not None:
            body["items"] = [line.to_item() for line in self.lines]
        if self.confirmation is not None:
            body["confirmation"] = self.confirmation
        return body


def is_confirmation(value: object) -> bool:
    return isinstance(value, str) and CONFIRMATION.fullmatch(value) is not None


def parse_credit_request(body: object, rates: frozenset[int]) -> CreditRequest:
    """Validate a CREDIT request:
    {"refers_to": {"code", "number"}, "reason", "items"?, "confirmation"?}."""
    if not isinstance(body, Mapping):
        raise DeviceError(Status.BAD_REQUEST, "credit request must be a map")
    unknown = set(body) - {"refers_to", "reason", "items", "confirmation"}
    if unknown:
        raise DeviceError(Status.INVALID_INVOICE, f"unknown fields {shown_keys(unknown)}")
    ref = body.get("refers_to")
    if not isinstance(ref, Mapping):
        raise DeviceError(Status.INVALID_INVOICE, "refers_to must be a map with code and number")
    code, number = ref.get("code"), ref.get("number")
    if not is_invoice_code(code) or not is_invoice_number(number):
        raise DeviceError(
            Status.INVALID_INVOICE, "refers_to needs a 12-digit code and an 8-digit number"
        )
    assert isinstance(code, str) and isinstance(number, str)
    reason = check_text(body.get("reason"), "reason", MAX_REASON_CHARS)
    items = body.get("items")
    lines = None if items is None else parse_items(items, rates, credit=True)
    confirmation = body.get("confirmation")
    if confirmation is not None and not is_confirmation(confirmation):
        raise DeviceError(
            Status.INVALID_INVOICE,
            f"confirmation is RC and 16 hex digits (the buyer's), got {shown(confirmation)}",
        )
    return CreditRequest(code, number, reason, lines, confirmation)


def is_invoice_code(value: object) -> bool:
    return isinstance(value, str) and len(value) == 12 and value.isascii() and value.isdigit()


def is_invoice_number(value: object) -> bool:
    return isinstance(value, str) and len(value) == 8 and value.isascii() and value.isdigit()


def recheck_lines(items: object, rates: frozenset[int], *, credit: bool) -> Totals:
    """Re-derive every line of a signed payload and return its totals.

    Raises DeviceError naming the first line whose amount or tax is not
    what the rounding rule gives.
    """
    if not isinstance(items, list) or not items or len(items) > MAX_ITEMS:
        raise DeviceError(Status.TOO_MANY_ITEMS, "items must be a list of 1 to 100 lines")
    amount = tax = 0
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise DeviceError(Status.INVALID_INVOICE, f"items[{index}] must be a map")
        quantity = item.get("quantity")
        if credit and isinstance(quantity, str) and quantity.startswith("-"):
            quantity = quantity[1:]
        elif credit:
            raise DeviceError(
                Status.BAD_QUANTITY, f"items[{index}] credit quantity must be negative"
            )
        line = _line(
            item.get("name"),
            quantity,
            item.get("unit_price"),
            item.get("tax_rate_bp"),
            index,
            rates,
            credit,
        )
        if item.get("amount") != line.amount or item.get("tax") != line.tax:
            raise DeviceError(
                Status.INVALID_INVOICE,
                f"items[{index}] amount/tax {shown(item.get('amount'))}/{shown(item.get('tax'))}"
                f" should be {line.amount}/{line.tax}",
            )
        if item.keys() != _LINE_KEYS or item["quantity"] != format_quantity(line.quantity_milli):
            # Extra fields, or a non-canonical quantity ("1.50" for "1.5"): either would
            # let two byte strings stand for the same line. (Name, price and rate were
            # read from the item itself.)
            raise DeviceError(Status.INVALID_INVOICE, f"items[{index}] is not in canonical form")
        amount += line.amount
        tax += line.tax
    return Totals(amount, tax)


_LINE_KEYS = frozenset(Line("", 1, 1, 0, 0, 0).to_payload())
