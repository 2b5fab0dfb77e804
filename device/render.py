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
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import segno

from device.protocol import qr
from device.protocol.document import parse_utc

RECEIPT_ZONE = "Asia/Shanghai"
# China has one offset all year: the receipt still says +08:00 where no tz database exists.
FALLBACK_ZONES = {"Asia/Shanghai": timezone(timedelta(hours=8))}
PAPER_COLUMNS = {58: 32, 80: 48}
PAPER_DOTS = {58: 384, 80: 576}
TRAINING_BANNER = "TRAINING - NOT A VALID INVOICE"
KIND_TITLES = {
    "invoice": "INVOICE 发票",
    "credit": "CREDIT NOTE 红字发票",
    "x_report": "X REPORT",
    "z_report": "Z REPORT (DAY CLOSE)",
}


def yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"


def rate(bp: int) -> str:
    return f"{bp // 100}%" if bp % 100 == 0 else f"{bp / 100:g}%"


def display_width(text: str) -> int:
    """Columns on a terminal or printer: CJK characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def fit(text: str, width: int) -> str:
    out, used = [], 0
    for char in text:
        w = display_width(char)
        if used + w > width:
            break
        out.append(char)
        used += w
    return "".join(out)


def two_columns(left: str, right: str, width: int) -> str:
    left = fit(left, max(1, width - display_width(right) - 1))
    gap = width - display_width(left) - display_width(right)
    return left + " " * max(1, gap) + right


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
    when = datetime.fromtimestamp(parse_utc(issued_at), UTC).astimezone(zone_of(zone))
    text = when.strftime("%Y-%m-%d %H:%M:%S %z")
    return f"{text[:-2]}:{text[-2:]}"


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
        p = self.payload
        rule = "-" * width
        out: list[str] = []
        banner = center(f"*** {TRAINING_BANNER} ***" if width >= 40 else TRAINING_BANNER, width)
        if self.training:
            out += [banner, rule]
        out.append(center(KIND_TITLES.get(str(p["kind"]), str(p["kind"]).upper()), width))
        seller = p.get("seller") or {}
        out.append(center(str(seller.get("name", "")), width))
        out.append(center(str(seller.get("tax_id", "")), width))
        out.append(rule)
        if p.get("code") is not None:
            out.append(two_columns("Code", str(p["code"]), width))
            out.append(two_columns("Number", str(p["number"]), width))
        issued = local_time(str(p["issued_at"]), self.zone)
        label = "Issued" if width >= display_width(issued) + 7 else "Time"
        out.append(two_columns(label, issued, width))
        out.append(two_columns("Device", f"{p['device_id']} #{p['counter']}", width))
        buyer = p.get("buyer")
        if buyer:
            out.append(two_columns("Buyer", str(buyer.get("name", "")), width))
            if buyer.get("tax_id"):
                out.append(two_columns("Buyer tax id", str(buyer["tax_id"]), width))
        refers = p.get("refers_to")
        if refers:
            out.append(two_columns("Credits", f"{refers['code']}/{refers['number']}", width))
            out.append(fit(f"Reason: {p.get('reason', '')}", width))
            if p.get("confirmation"):  # the buyer's red-letter confirmation (红字信息确认单)
                out.append(two_columns("Confirmed", str(p["confirmation"]), width))
        out.append(rule)
        for item in p.get("items") or []:
            out.append(fit(str(item["name"]), width))
            qty = f"  {item['quantity']} x {yuan(int(item['unit_price']))}"
            out.append(
                two_columns(
                    f"{qty}  {rate(int(item['tax_rate_bp']))}", yuan(int(item["amount"])), width
                )
            )
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
        out.append(rule)
        out.append(two_columns("Amount", yuan(int(p["amount"])), width))
        out.append(two_columns("Tax", yuan(int(p["tax"])), width))
        out.append(two_columns("TOTAL", yuan(int(p["total"])), width))
        out.append(rule)
        out.append(two_columns("Check code", "", width).rstrip())
        code = str(p["check_code"])
        out.append(center(" ".join(code[i : i + 5] for i in range(0, len(code), 5)), width))
        if p.get("offline"):
            out.append(center("(issued offline)", width))
        if self.training:
            out += [rule, banner]
        return out


def text(payload: dict[str, Any], paper: int = 58, qr_text: str | None = None) -> str:
    """The receipt as text, with the verification payload where a QR code would go."""
    receipt = Receipt(payload, qr_text)
    width = PAPER_COLUMNS[paper]
    out = receipt.lines(width)
    if receipt.verification:
        out += ["", fit("Verify:", width), receipt.verification]
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
            f'<text x="{MARGIN_PX}" y="{y}" xml:space="preserve"{weight}>{escape(line)}</text>'
        )
    height = MARGIN_PX * 2 + (len(lines) + 1) * LINE_PX
    if receipt.verification:
        code = segno.make(receipt.verification, error="m")
        scale = 4
        size = int(code.symbol_size(scale=scale)[0])
        buffer = io.BytesIO()
        code.save(
            buffer, kind="svg", scale=scale, xmldecl=False, svgns=False, nl=False, omitsize=False
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


def _font(candidates: tuple[str, ...], size: int) -> Any:
    """The first installed font of `candidates`, else Pillow's built-in one."""
    from PIL import ImageFont

    for path in candidates:
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def png(payload: dict[str, Any], paper: int = 80, qr_text: str | None = None) -> bytes:
    """A receipt image as wide as the paper's print head (384 or 576 dots).

    Characters sit on a fixed grid (CJK characters take two cells), so the
    columns line up whatever font is installed; CJK glyphs need a CJK font
    (Noto CJK, WenQuanYi) on the machine, else the font's placeholder shows.
    """
    from PIL import Image, ImageDraw

    receipt = Receipt(payload, qr_text)
    columns = PAPER_COLUMNS[paper]
    width = PAPER_DOTS[paper]
    cell = (width - 2 * MARGIN_PX) / columns
    size = max(10, int(cell * 1.6))
    latin, cjk = _font(MONO_FONTS, size), _font(CJK_FONTS, size)
    lines = receipt.lines(columns)
    qr_image = None
    if receipt.verification:
        buffer = io.BytesIO()
        segno.make(receipt.verification, error="m").save(buffer, kind="png", scale=5, border=2)
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
