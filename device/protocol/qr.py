"""What a receipt's QR code carries: everything a verifier (查验) needs.

    taxctl:v1?c=<invoice code>&n=<number>&d=<YYYY-MM-DD>&t=<total fen>&k=<check code>[&x=1]

Code and number identify the invoice; date, total and check code are what
verification compares with the chain's copy. `x=1` marks a training
document (never a valid invoice). The same fields can be typed in by hand
on the verification page or given to `taxctl verify`. Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode

from device.protocol.untrusted import shown_keys

PREFIX = "taxctl:v1?"
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


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

    def to_payload(self) -> str:
        fields: dict[str, str] = {"c": self.code, "n": self.number, "d": self.date}
        if self.total is not None:
            fields["t"] = str(self.total)
        if self.check_code is not None:
            fields["k"] = self.check_code
        if self.training:
            fields["x"] = "1"
        return PREFIX + urlencode(fields)

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


def parse(text: str) -> VerificationQuery:
    text = text.strip()
    if not text.startswith(PREFIX):
        raise QrError(f"a taxctl verification payload starts with {PREFIX!r}")
    fields = parse_qs(text[len(PREFIX) :], keep_blank_values=True, strict_parsing=False)
    if any(len(values) != 1 for values in fields.values()):
        raise QrError("each field may appear once")
    one = {key: values[0] for key, values in fields.items()}
    unknown = set(one) - {"c", "n", "d", "t", "k", "x"}
    if unknown:
        raise QrError(f"unknown fields {shown_keys(unknown)}")
    total: int | None = None
    if "t" in one:
        if not re.fullmatch(r"-?\d{1,13}", one["t"]):
            raise QrError("the total is a whole number of fen")
        total = int(one["t"])
    query = VerificationQuery(
        code=one.get("c", ""),
        number=one.get("n", ""),
        date=one.get("d", ""),
        check_code=one.get("k"),
        total=total,
        training=one.get("x") == "1",
    )
    why = query.problem()
    if why:
        raise QrError(why)
    return query
