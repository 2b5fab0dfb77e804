"""What the printer prints: a receipt for a signed document.

One layout, four outputs: plain text for a terminal (32 columns for 58 mm
paper, 48 for 80 mm), ESC/POS bytes for a real thermal printer (GB18030
text, the printer's own QR command), SVG, and PNG. Each shows the seller,
buyer, lines, totals, the check code and a QR code with the verification
payload (device/protocol/qr.py). Training documents say, at the top and the
bottom, that they are not valid invoices.

The QR payload is the device's own (the `qr` of its DocumentResponse, which
carries its signature for offline 查验) when the caller has it; else it is
built from the document, unsigned. The issue time is printed in the shop's
zone with its offset (RECEIPT_ZONE, Asia/Shanghai, unless told otherwise), so
a buyer reads local time and 查验 still gets the UTC date the QR holds.
"""

from __future__ import annotations

import io
import logging
import re
import shutil
import subprocess
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from functools import cache
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import segno

from device.protocol import qr
from device.protocol.document import parse_utc

log = logging.getLogger(__name__)

RECEIPT_ZONE = "Asia/Shanghai"
# China has one offset all year: the receipt still says +08:00 where no tz database exists.
FALLBACK_ZONES = {"Asia/Shanghai": timezone(timedelta(hours=8))}
PAPER_COLUMNS = {58: 32, 80: 48}
PAPER_DOTS = {58: 384, 80: 576}
QUIET_ZONE = 4  # light modules around a QR symbol (ISO/IEC 18004)
# The verification payload wraps before each `&` (and after `?`), so each
# printed line is whole fields a person can compare with a screen.
PAYLOAD_BREAKS = re.compile(r"(?=&)|(?<=\?)")
WORD_BREAKS = re.compile(r"(?<= )")
TRAINING_BANNER = "TRAINING - NOT A VALID INVOICE"
KIND_TITLES = {
    "invoice": "INVOICE 发票",
    "credit": "CREDIT NOTE 红字发票",
    "x_report": "X REPORT",
    "z_report": "Z REPORT (DAY CLOSE)",
}


def yuan(fen: int) -> str:
    whole, cents = divmod(-fen if fen < 0 else fen, 100)
    return f"-{whole}.{cents:02d}" if fen < 0 else f"{whole}.{cents:02d}"


def rate(bp: int) -> str:
    return f"{bp // 100}%" if bp % 100 == 0 else f"{bp / 100:g}%"


# Each character's columns, looked up rather than asked of unicodedata every time a
# receipt measures a line (a receipt with CJK names measures a few hundred characters).
# Filled as characters are met, bounded: the text comes from the document, and a hostile
# one could name every code point; past the bound, misses are measured each time.
_WIDTHS: dict[str, int] = {}
_WIDTHS_KEPT = 8192


def _char_width(char: str) -> int:
    width = 2 if unicodedata.east_asian_width(char) in "WF" else 1
    if len(_WIDTHS) < _WIDTHS_KEPT:
        _WIDTHS[char] = width
    return width


def display_width(text: str) -> int:
    """Columns on a terminal or printer: CJK characters take two."""
    if text.isascii():  # most receipt lines: one column a character, no lookups
        return len(text)
    widths = _WIDTHS
    try:
        return sum(map(widths.__getitem__, text))
    except KeyError:
        return sum(widths.get(char) or _char_width(char) for char in text)


def fit(text: str, width: int) -> str:
    """The longest head of `text` that takes at most `width` columns."""
    if text.isascii():
        return text[: max(width, 0)]
    if display_width(text) <= width:  # every character's width is now known (or measured)
        return text
    widths, used = _WIDTHS, 0
    for index, char in enumerate(text):
        used += widths.get(char) or _char_width(char)
        if used > width:
            return text[:index]
    return text


def wrap(text: str, width: int, breaks: re.Pattern[str] = WORD_BREAKS) -> list[str]:
    """`text` over lines of at most `width` columns, cut at `breaks` where they fit and
    anywhere else where they do not; the lines joined are `text` again."""
    if display_width(text) <= width:  # the common case: one line
        return [text]
    measure = len if text.isascii() else display_width
    out: list[str] = []
    line, used = "", 0  # widths add up, so a line's is kept rather than measured again
    for piece in _pieces(text, breaks):
        while piece:
            size = measure(piece)
            if used + size <= width:
                line, used, piece = line + piece, used + size, ""
            elif line:
                out.append(line)
                line, used = "", 0
            else:
                head = fit(piece, width) or piece[0]
                out.append(head)
                piece = piece[len(head) :]
    return [*out, line] if line or not out else out


# The breaks the receipt uses, as plain text replacements: a zero-width regular expression
# split scans the text a character at a time (a third of wrapping a QR payload). Empty
# pieces may differ from re.split's, and wrap skips them.
_PAYLOAD_MARKS: tuple[tuple[str, str], ...] = (("&", "\0&"), ("?", "?\0"))
_WORD_MARKS: tuple[tuple[str, str], ...] = ((" ", " \0"),)


def _pieces(text: str, breaks: re.Pattern[str]) -> list[str]:
    """`text` cut at `breaks`, as `breaks.split` cuts it (but for empty pieces)."""
    if breaks is PAYLOAD_BREAKS:
        marks = _PAYLOAD_MARKS
    elif breaks is WORD_BREAKS:
        marks = _WORD_MARKS
    else:
        return breaks.split(text)
    if "\0" in text:
        return breaks.split(text)
    for old, new in marks:
        text = text.replace(old, new)
    return text.split("\0")


class Row(str):
    """A line of a label and a right-aligned value (the SVG anchors the value at the margin)."""

    right: str

    def __new__(cls, left: str, right: str, width: int) -> Row:
        return _row(left, right, width - display_width(left) - display_width(right))


def _row(left: str, right: str, gap: int) -> Row:
    row = str.__new__(Row, left + " " * max(1, gap) + right)
    row.right = right
    return row


def two_columns(left: str, right: str, width: int) -> Row:
    right_width = display_width(right)
    room = max(1, width - right_width - 1)
    if left.isascii():
        left = left[:room]
        return _row(left, right, width - len(left) - right_width)
    left = fit(left, room)
    return _row(left, right, width - display_width(left) - right_width)


def labelled(label: str, value: str, width: int) -> list[str]:
    """One row when `label` and `value` fit on a line, else the label then the value wrapped."""
    if display_width(label) + 1 + display_width(value) <= width:
        return [two_columns(label, value, width)]
    return [label, *("  " + line.rstrip() for line in wrap(value, width - 2))]


def center(text: str, width: int) -> str:
    text = fit(text, width)
    pad = (width - display_width(text)) // 2
    return " " * pad + text


def zone_of(name: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        if name in FALLBACK_ZONES:
            return FALLBACK_ZONES[name]
        raise ValueError(f"unknown time zone {name!r}") from None


def local_time(issued_at: str, zone: str = RECEIPT_ZONE) -> str:
    """`2026-01-01T00:00:00Z` as `2026-01-01 08:00:00 +08:00` (in `zone`)."""
    when = datetime.fromtimestamp(parse_utc(issued_at), zone_of(zone))
    offset = when.utcoffset()
    if offset is None or when.year < 1000 or offset % _MINUTE:
        # what strftime does with these (a zone's offset in seconds, say) stays its own
        text = when.strftime("%Y-%m-%d %H:%M:%S %z")
        return f"{text[:-2]}:{text[-2:]}"
    # strftime's text, formatted here: strftime costs half of this function
    minutes = offset // _MINUTE
    hours, minutes = divmod(-minutes if minutes < 0 else minutes, 60)
    return (
        f"{when.year}-{when.month:02d}-{when.day:02d} "
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d} "
        f"{'-' if offset < _NO_OFFSET else '+'}{hours:02d}:{minutes:02d}"
    )


_MINUTE = timedelta(minutes=1)
_NO_OFFSET = timedelta(0)


@dataclass(frozen=True)
class Receipt:
    payload: dict[str, Any]
    qr_text: str | None = None  # the device's signed QR payload, when known
    zone: str = RECEIPT_ZONE

    @property
    def training(self) -> bool:
        return bool(self.payload.get("training"))

    @property
    def verification(self) -> str | None:
        if self.payload.get("code") is None:
            return None
        if self.qr_text is not None:
            return self.qr_text
        return qr.for_document(self.payload).to_payload()

    def lines(self, width: int) -> list[str]:
        rule = "-" * width
        banner = center(f"*** {TRAINING_BANNER} ***" if width >= 40 else TRAINING_BANNER, width)
        out = [banner, rule] if self.training else []
        out += self._heading(width)
        out.append(rule)
        out += self._parties(width)
        out.append(rule)
        out += self._items(width)
        out.append(rule)
        out += self._totals(width)
        out.append(rule)
        out += self._check_code(width)
        if self.training:
            out += [rule, banner]
        return out

    def _heading(self, width: int) -> list[str]:
        p = self.payload
        seller = p.get("seller") or {}
        return [
            center(KIND_TITLES.get(str(p["kind"]), str(p["kind"]).upper()), width),
            center(str(seller.get("name", "")), width),
            center(str(seller.get("tax_id", "")), width),
        ]

    def _parties(self, width: int) -> list[str]:
        """Number, time and device; the buyer; what a credit note credits."""
        p = self.payload
        out: list[str] = []
        if p.get("code") is not None:
            out.append(two_columns("Code", str(p["code"]), width))
            out.append(two_columns("Number", str(p["number"]), width))
        issued = local_time(str(p["issued_at"]), self.zone)
        label = "Issued" if width >= display_width(issued) + 7 else "Time"
        out.append(two_columns(label, issued, width))
        out += labelled("Device", f"{p['device_id']} #{p['counter']}", width)
        buyer = p.get("buyer")
        if buyer:
            out += labelled("Buyer", str(buyer.get("name", "")), width)
            if buyer.get("tax_id"):
                out.append(two_columns("Buyer tax id", str(buyer["tax_id"]), width))
        refers = p.get("refers_to")
        if refers:
            out.append(two_columns("Credits", f"{refers['code']}/{refers['number']}", width))
            out.append(fit(f"Reason: {p.get('reason', '')}", width))
            if p.get("confirmation"):  # the buyer's red-letter confirmation (红字信息确认单)
                out += labelled("Confirmed", str(p["confirmation"]), width)
        return out

    def _items(self, width: int) -> list[str]:
        """The lines sold, or a report's counts."""
        p = self.payload
        out: list[str] = []
        for item in p.get("items") or []:
            out += [line.rstrip() for line in wrap(str(item["name"]), width)]
            qty = f"  {item['quantity']} x {yuan(int(item['unit_price']))}"
            terms, amount = f"{qty}  {rate(int(item['tax_rate_bp']))}", yuan(int(item["amount"]))
            used, amount_width = display_width(terms), display_width(amount)
            if used + 1 + amount_width > width:
                out.append(fit(terms, width))  # too long beside the amount: on a line of its own
                terms, used = "", 0
            # two_columns(terms, amount, width), whose cut never applies here: measured once
            out.append(_row(terms, amount, width - used - amount_width))
        report = p.get("report")
        if report:
            out.append(two_columns("Z number", str(report["z_number"]), width))
            out.append(two_columns("Documents", str(report["documents"]), width))
            out.append(
                two_columns(
                    "Invoices / credits", f"{report['invoices']} / {report['credits']}", width
                )
            )
            for row in report.get("by_rate", []):
                out.append(
                    two_columns(
                        f"  at {rate(int(row['tax_rate_bp']))}", yuan(int(row["amount"])), width
                    )
                )
        return out

    def _totals(self, width: int) -> list[str]:
        p = self.payload
        return [
            two_columns("Amount", yuan(int(p["amount"])), width),
            two_columns("Tax", yuan(int(p["tax"])), width),
            two_columns("TOTAL", yuan(int(p["total"])), width),
        ]

    def _check_code(self, width: int) -> list[str]:
        code = str(self.payload["check_code"])
        out = [
            two_columns("Check code", "", width).rstrip(),
            center(" ".join(code[i : i + 5] for i in range(0, len(code), 5)), width),
        ]
        if self.payload.get("offline"):
            out.append(center("(issued offline)", width))
        return out


def text(payload: dict[str, Any], paper: int = 58, qr_text: str | None = None) -> str:
    """The receipt as text, with the verification payload where a QR code would go, wrapped
    to the paper before each `&` (the lines after `Verify:`, joined, are the payload)."""
    receipt = Receipt(payload, qr_text)
    width = PAPER_COLUMNS[paper]
    out = receipt.lines(width)
    verification = receipt.verification  # built from the payload when qr_text is None
    if verification:
        out += ["", fit("Verify:", width), *wrap(verification, width, PAYLOAD_BREAKS)]
    return "\n".join(out) + "\n"


def escpos(payload: dict[str, Any], paper: int = 58, qr_text: str | None = None) -> bytes:
    """ESC/POS for a thermal printer: GB18030 text, native QR code, cut."""
    receipt = Receipt(payload, qr_text)
    width = PAPER_COLUMNS[paper]
    out = bytearray(b"\x1b@")  # initialise
    out += b"\x1c&"  # Chinese character mode (GB18030 printers)
    for line in receipt.lines(width):
        emphasised = line.strip().startswith(("TOTAL", "***", TRAINING_BANNER))
        if emphasised:
            out += b"\x1bE\x01"
        out += line.encode("gb18030", errors="replace") + b"\n"
        if emphasised:
            out += b"\x1bE\x00"
    verification = receipt.verification
    if verification:
        data = verification.encode()
        store = len(data) + 3
        out += b"\x1ba\x01"  # centre
        out += b"\x1d(k\x04\x001A2\x00"  # QR model 2
        out += b"\x1d(k\x03\x001C\x06"  # module size 6 dots
        out += b"\x1d(k\x03\x001E1"  # error correction M
        out += b"\x1d(k" + bytes([store & 0xFF, store >> 8]) + b"1P0" + data
        out += b"\x1d(k\x03\x001Q0"  # print the symbol
        out += b"\x1ba\x00\n"
    out += b"\n\n\n\x1dV\x42\x00"  # feed and partial cut
    return bytes(out)


LINE_PX = 22
MARGIN_PX = 16
CHAR_PX = 11


def _svg_line(line: str, width: int) -> str:
    """A row's value is its own chunk anchored at the right margin: a CJK glyph in the font
    is seldom exactly two cells wide, so padding with spaces would stop short of it. The
    padding stays in the first chunk, so the element's text is still the line."""
    if not isinstance(line, Row) or not line.right:
        return escape(line)
    return (
        f"<tspan>{escape(line[: len(line) - len(line.right)])}</tspan>"
        f'<tspan x="{width - MARGIN_PX}" text-anchor="end">{escape(line.right)}</tspan>'
    )


def svg(payload: dict[str, Any], paper: int = 80, qr_text: str | None = None) -> str:
    receipt = Receipt(payload, qr_text)
    width_chars = PAPER_COLUMNS[paper]
    lines = receipt.lines(width_chars)
    width = MARGIN_PX * 2 + width_chars * CHAR_PX
    body = []
    for index, line in enumerate(lines):
        y = MARGIN_PX + (index + 1) * LINE_PX
        emphasised = line.strip().startswith(("TOTAL", "***", TRAINING_BANNER))
        weight = ' font-weight="bold"' if emphasised else ""
        body.append(
            f'<text x="{MARGIN_PX}" y="{y}" xml:space="preserve"{weight}>'
            f"{_svg_line(line, width)}</text>"
        )
    height = MARGIN_PX * 2 + (len(lines) + 1) * LINE_PX
    if receipt.verification:
        code = segno.make(receipt.verification, error="m")
        scale = 4
        size = int(code.symbol_size(scale=scale, border=QUIET_ZONE)[0])
        buffer = io.BytesIO()
        code.save(
            buffer,
            kind="svg",
            scale=scale,
            border=QUIET_ZONE,
            xmldecl=False,
            svgns=False,
            nl=False,
            omitsize=False,
        )
        qr_svg = buffer.getvalue().decode()
        body.append(f'<g transform="translate({(width - size) // 2},{height})">{qr_svg}</g>')
        height += size + MARGIN_PX
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="monospace" font-size="18">'
        f'<rect width="100%" height="100%" fill="white"/>' + "".join(body) + "</svg>\n"
    )


MONO_FONTS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationMono-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSansMono-Regular.ttf",
)
CJK_FONTS = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
)


FC_MATCH_TIMEOUT = 5.0


def fc_match(family: str, lang: str | None = None) -> str | None:
    """fontconfig's best file for `family` (covering `lang`, if given), or None without
    fontconfig. fc-match always names some font, so one not covering `lang` does not count."""
    exe = shutil.which("fc-match")
    if exe is None:
        return None
    pattern = f"{family}:lang={lang}" if lang else family
    try:
        done = subprocess.run(
            [exe, "--format=%{file}\t%{lang}", pattern],
            capture_output=True,
            text=True,
            timeout=FC_MATCH_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    path, _, langs = done.stdout.partition("\t")
    if done.returncode != 0 or not path or (lang and lang not in langs.split("|")):
        return None
    return path


@cache
def find_font(kind: str) -> str | None:
    """The file for `kind` ("mono" or "cjk"): fontconfig's choice, else the first of the
    known Debian paths that exists, else None."""
    family, lang, known = (
        ("monospace", None, MONO_FONTS) if kind == "mono" else ("sans", "zh-cn", CJK_FONTS)
    )
    found = fc_match(family, lang)
    if found is not None and Path(found).is_file():
        return found
    return next((path for path in known if Path(path).is_file()), None)


def _font(kind: str, size: int) -> Any:
    """The font for `kind`, else Pillow's built-in one (CJK glyphs then print as boxes)."""
    from PIL import ImageFont

    path = find_font(kind)
    if path is not None:
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            pass
    if kind == "cjk":
        log.warning(
            "no CJK font found (install fonts-noto-cjk or fonts-wqy-microhei): "
            "CJK characters in PNG receipts print as boxes"
        )
    return ImageFont.load_default(size=size)


def png(payload: dict[str, Any], paper: int = 80, qr_text: str | None = None) -> bytes:
    """A receipt image as wide as the paper's print head (384 or 576 dots).

    Characters sit on a fixed grid (CJK characters take two cells), so the
    columns line up whatever font is installed. Fonts are fontconfig's
    (`fc-match`) where it is installed, else the first of MONO_FONTS /
    CJK_FONTS that exists; with no CJK font (Noto CJK, WenQuanYi) a one-line
    warning is logged and Pillow's built-in font draws boxes for CJK.
    """
    from PIL import Image, ImageDraw

    receipt = Receipt(payload, qr_text)
    columns = PAPER_COLUMNS[paper]
    width = PAPER_DOTS[paper]
    cell = (width - 2 * MARGIN_PX) / columns
    size = max(10, int(cell * 1.6))
    latin, cjk = _font("mono", size), _font("cjk", size)
    lines = receipt.lines(columns)
    qr_image = None
    if receipt.verification:
        buffer = io.BytesIO()
        code = segno.make(receipt.verification, error="m")
        side = code.symbol_size(scale=1, border=QUIET_ZONE)[0]
        scale = max(1, min(5, width // side))  # a long payload still fits the paper
        code.save(buffer, kind="png", scale=scale, border=QUIET_ZONE)
        qr_image = Image.open(io.BytesIO(buffer.getvalue())).convert("L")
    text_height = len(lines) * LINE_PX
    height = MARGIN_PX * 2 + text_height + (qr_image.height + MARGIN_PX if qr_image else 0)
    image = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(image)
    for row, line in enumerate(lines):
        column = 0
        y = MARGIN_PX + row * LINE_PX
        for char in line:
            wide = display_width(char) == 2
            if char != " ":
                draw.text((MARGIN_PX + column * cell, y), char, fill=0, font=cjk if wide else latin)
            column += 2 if wide else 1
    if qr_image is not None:
        image.paste(
            qr_image, ((width - qr_image.width) // 2, MARGIN_PX + text_height + MARGIN_PX // 2)
        )
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()
