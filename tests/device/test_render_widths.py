"""The receipt's column arithmetic (widths looked up per character, widths added up
rather than measured again) gives exactly what measuring each string afresh gave, and
its times and amounts are the text strftime and the old formatting gave."""

from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfoNotFoundError

import pytest

from device import render
from device.protocol.document import parse_utc

# A spread of widths: ASCII, CJK, fullwidth and halfwidth forms, combining marks, an
# ideographic space, emoji, an astral ideograph, controls.
ALPHABET = (
    "aZ9 &?=.-"
    + "贸易公司个人散客"
    + "ＡＢ１"
    + "ｱｲ"
    + "\u0301é"
    + "\u3000"
    + "😀\U00020000"
    + "\t\0"  # a NUL: the breaks' marker, so those texts are split the other way
)


def old_display_width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def old_fit(text: str, width: int) -> str:
    out, used = [], 0
    for char in text:
        w = old_display_width(char)
        if used + w > width:
            break
        out.append(char)
        used += w
    return "".join(out)


def old_wrap(text: str, width: int, breaks: re.Pattern[str] = render.WORD_BREAKS) -> list[str]:
    out: list[str] = []
    line = ""
    for piece in breaks.split(text):
        while piece:
            if old_display_width(line + piece) <= width:
                line, piece = line + piece, ""
            elif line:
                out.append(line)
                line = ""
            else:
                head = old_fit(piece, width) or piece[0]
                out.append(head)
                piece = piece[len(head) :]
    return [*out, line] if line or not out else out


def old_two_columns(left: str, right: str, width: int) -> tuple[str, str]:
    left = old_fit(left, max(1, width - old_display_width(right) - 1))
    gap = width - old_display_width(left) - old_display_width(right)
    return left + " " * max(1, gap) + right, right


def texts(seed: int, count: int) -> list[str]:
    rnd = random.Random(seed)
    out = ["", " ", "a", "贸", "贸易 公司", "&c=1&n=2", "taxctl:v1?c=1&n=2&d=3"]
    for _ in range(count):
        size = rnd.choice((1, 3, 8, 20, 60))
        out.append("".join(rnd.choice(ALPHABET) for _ in range(size)))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_widths_fits_and_wraps_equal_measuring_afresh(seed: int) -> None:
    render._WIDTHS.clear()  # misses (measured and kept) and hits both take part
    for text in texts(seed, 150):
        assert render.display_width(text) == old_display_width(text), text
        for width in (-1, 0, 1, 2, 3, 5, 8, 16, 32, 48):
            assert render.fit(text, width) == old_fit(text, width), (text, width)
            assert render.wrap(text, width) == old_wrap(text, width), (text, width)
            assert render.wrap(text, width, render.PAYLOAD_BREAKS) == old_wrap(
                text, width, render.PAYLOAD_BREAKS
            )
            right = "贸1.00" if seed % 2 else "12.50"
            row = render.two_columns(text, right, width)
            assert (str(row), row.right) == old_two_columns(text, right, width)
            made = render.Row(text, "9.99", width)
            gap = max(1, width - old_display_width(text) - 4)
            assert (str(made), made.right) == (text + " " * gap + "9.99", "9.99")


def test_a_full_width_table_still_measures_every_character(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the table's bound, characters not in it are measured each time, not guessed."""
    monkeypatch.setattr(render, "_WIDTHS", {})
    monkeypatch.setattr(render, "_WIDTHS_KEPT", 0)
    for text in texts(9, 60):
        assert render.display_width(text) == old_display_width(text)
        assert render.wrap(text, 7) == old_wrap(text, 7)
    assert render._WIDTHS == {}


def test_the_width_table_is_bounded() -> None:
    for code in range(0x4E00, 0x4E00 + render._WIDTHS_KEPT + 100):
        render.display_width(chr(code))
    assert len(render._WIDTHS) <= render._WIDTHS_KEPT


def old_local_time(issued_at: str, zone: str) -> str:
    when = datetime.fromtimestamp(parse_utc(issued_at), UTC).astimezone(render.zone_of(zone))
    text = when.strftime("%Y-%m-%d %H:%M:%S %z")
    return f"{text[:-2]}:{text[-2:]}"


def outcome(fn: Callable[[str, str], str], issued_at: str, zone: str) -> object:
    try:
        return fn(issued_at, zone)
    except (ValueError, OverflowError, OSError) as exc:
        return type(exc)


@pytest.mark.parametrize(
    "zone",
    ["Asia/Shanghai", "UTC", "America/St_Johns", "Asia/Kolkata", "Europe/Dublin", "Etc/GMT+12"],
)
def test_local_time_formats_as_strftime_did(zone: str) -> None:
    """Offsets of whole minutes, either sign, zero; local mean time (seconds) before 1901."""
    for year in (1, 999, 1000, 1899, 1900, 1901, 1969, 1970, 2026, 2038, 9998, 9999):
        for rest in ("01-01T00:00:00Z", "03-31T01:30:00Z", "10-27T01:00:00Z", "12-31T23:59:59Z"):
            issued_at = f"{year:04d}-{rest}"
            assert outcome(render.local_time, issued_at, zone) == outcome(
                old_local_time, issued_at, zone
            ), issued_at


def test_local_time_without_a_tz_database(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> None:
        raise ZoneInfoNotFoundError(name)

    monkeypatch.setattr(render, "ZoneInfo", missing)
    for issued_at in ("2026-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"):
        assert outcome(render.local_time, issued_at, "Asia/Shanghai") == outcome(
            old_local_time, issued_at, "Asia/Shanghai"
        )
    assert render.local_time("2026-01-01T00:00:00Z") == "2026-01-01 08:00:00 +08:00"


@pytest.mark.parametrize("fen", [0, 1, 9, 10, 99, 100, 101, 12345, -1, -99, -100, -12345, 10**15])
def test_yuan_as_before(fen: int) -> None:
    sign = "-" if fen < 0 else ""
    assert render.yuan(fen) == f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"


def old_item_lines(items: list[dict[str, Any]], width: int) -> list[str]:
    out: list[str] = []
    for item in items:
        out += [line.rstrip() for line in old_wrap(str(item["name"]), width)]
        qty = f"  {item['quantity']} x {render.yuan(int(item['unit_price']))}"
        terms = f"{qty}  {render.rate(int(item['tax_rate_bp']))}"
        amount = render.yuan(int(item["amount"]))
        if old_display_width(terms) + 1 + old_display_width(amount) > width:
            out.append(old_fit(terms, width))
            terms = ""
        out.append(old_two_columns(terms, amount, width)[0])
    return out


def test_item_lines_as_before() -> None:
    rnd = random.Random(11)
    for width in (20, 32, 48):
        items = [
            {
                "name": text,
                "quantity": rnd.choice(("1", "0.125", "12345.678", "9" * 30, "贸" * 12)),
                "unit_price": rnd.choice((0, 5, 129900, 10**12)),
                "tax_rate_bp": rnd.choice((0, 300, 650, 1300)),
                "amount": rnd.choice((0, -5, 4590, 10**14)),
            }
            for text in texts(width, 40)
        ]
        lines = render.Receipt({"items": items})._items(width)
        assert [str(line) for line in lines] == old_item_lines(items, width)
