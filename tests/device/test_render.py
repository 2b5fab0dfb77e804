"""Receipts in every output format carry the invoice and a QR code a verifier can read."""

from __future__ import annotations

import io
import logging
import xml.etree.ElementTree as ET
from dataclasses import replace
from itertools import takewhile
from pathlib import Path
from typing import Any

import pytest
import segno
from PIL import Image

from device import render
from device.protocol import codec, cose, invoice, qr
from device.protocol.framing import decode_frame
from tests.vectors.generate import generate

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def payload() -> dict[str, Any]:
    vectors = {v["name"]: bytes.fromhex(v["hex"]) for v in generate()["vectors"]}
    body = codec.decode(decode_frame(vectors["issue response"]).body)
    out = codec.decode(cose.decode_sign1(body["document"]).payload)
    assert isinstance(out, dict)
    return out


@pytest.mark.parametrize("paper", [58, 80])
def test_text_receipt_has_everything_and_fits_the_paper(
    payload: dict[str, Any], paper: int
) -> None:
    text = render.text(payload, paper)
    lines = text.splitlines()
    width = render.PAPER_COLUMNS[paper]
    assert all(render.display_width(line) <= width for line in lines)
    for needed in (
        "Training Taxpayer",
        payload["code"],
        payload["number"],
        "Green tea",
        "16.95",
        "ACME Trading",
        render.TRAINING_BANNER,
    ):
        assert needed in text, needed
    assert text.count(render.TRAINING_BANNER) == 2  # top and bottom
    assert " ".join(payload["check_code"][i : i + 5] for i in range(0, 20, 5)) in text
    printed = lines[lines.index("Verify:") + 1 :]
    assert qr.parse("".join(printed)) == qr.for_document(payload)
    assert len(printed) > 1 and all(line.startswith("&") for line in printed[1:])


def _longest(payload: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A credit note with every printed field at its longest, and a signed QR payload."""
    name = "贸易" * (invoice.MAX_NAME_CHARS // 2)
    item = dict(
        payload["items"][0], name=name, quantity=1_000_000, unit_price=10**10, amount=-(10**12)
    )
    longest = dict(
        payload,
        seller={"name": name, "tax_id": payload["seller"]["tax_id"]},
        buyer={"name": name, "tax_id": "9" * 18},
        items=[item],
        counter=2**32 - 1,
        amount=-(10**12),
        tax=-(10**12),
        total=-(10**12),
        refers_to={"code": "9" * 12, "number": "9" * 8},
        reason="退" * invoice.MAX_REASON_CHARS,
        confirmation="4403" + "9" * 20,
        offline=True,
    )
    signed = replace(
        qr.for_document(longest),
        device_id="TC" + "Z" * 12,
        doc_hash=b"\xff" * 32,
        signature=b"\xff" * 64,
    )
    return longest, signed.to_payload()


@pytest.mark.parametrize("paper", [58, 80])
def test_no_printed_line_exceeds_the_paper_with_the_longest_fields(
    payload: dict[str, Any], paper: int
) -> None:
    longest, signed = _longest(payload)
    width = render.PAPER_COLUMNS[paper]
    lines = render.text(longest, paper, signed).splitlines()
    too_wide = [line for line in lines if render.display_width(line) > width]
    assert too_wide == []
    assert any(line.startswith("  1000000 x 100000000.00  13%") for line in lines)  # not cut
    assert "".join(lines[lines.index("Verify:") + 1 :]) == signed
    buyer = lines.index("Buyer")  # the name does not fit beside its label: it wraps below
    wrapped = takewhile(lambda line: line.startswith("  "), lines[buyer + 1 :])
    assert "".join(line.strip() for line in wrapped).startswith(longest["buyer"]["name"])


def test_the_verification_payload_breaks_before_each_field() -> None:
    text = "taxctl:v1?c=998466875416&n=00000001&d=2026-09-21&t=3697&k=46733385301073938434&x=1"
    assert render.wrap(text, 32, render.PAYLOAD_BREAKS) == [
        "taxctl:v1?c=998466875416",
        "&n=00000001&d=2026-09-21&t=3697",
        "&k=46733385301073938434&x=1",
    ]
    assert render.wrap("s=" + "A" * 40, 16, render.PAYLOAD_BREAKS) == [
        "s=AAAAAAAAAAAAAA",
        "A" * 16,
        "A" * 10,
    ]
    assert render.wrap("贸易公司", 5) == ["贸易", "公司"]


def test_wide_characters_take_two_columns() -> None:
    assert render.display_width("贸易") == 4
    line = render.two_columns("买方 Buyer", "10.00", 20)
    assert render.display_width(line) == 20


def test_escpos_has_gb18030_text_a_native_qr_and_a_cut(payload: dict[str, Any]) -> None:
    data = render.escpos(dict(payload, buyer={"name": "贸易公司"}), 80)
    assert data.startswith(b"\x1b@")
    assert "贸易公司".encode("gb18030") in data
    verification = qr.for_document(payload).to_payload().encode()
    store = data.index(
        b"\x1d(k" + bytes([(len(verification) + 3) & 0xFF, (len(verification) + 3) >> 8]) + b"1P0"
    )
    assert data[store + 8 : store + 8 + len(verification)] == verification
    assert data.endswith(b"\x1dV\x42\x00")


def test_svg_is_valid_and_carries_lines_and_qr(payload: dict[str, Any]) -> None:
    document = ET.fromstring(render.svg(payload))
    texts = ["".join(t.itertext()) for t in document.iter(f"{SVG}text")]
    assert any("TOTAL" in t and "16.95" in t for t in texts)
    assert document.findall(".//{http://www.w3.org/2000/svg}path"), "no QR code drawn"


@pytest.mark.parametrize("paper", [58, 80])
def test_svg_right_aligned_values_end_at_the_margin(payload: dict[str, Any], paper: int) -> None:
    chinese = dict(payload, buyer={"name": "贸易公司", "tax_id": "91350100M000100Y43"})
    document = ET.fromstring(render.svg(chinese, paper))
    margin = int(document.attrib["width"]) - render.MARGIN_PX
    values = {}
    for row in document.iter(f"{SVG}text"):
        for span in row.iter(f"{SVG}tspan"):
            if span.get("text-anchor") == "end":
                assert int(span.attrib["x"]) == margin, span.text
                values[span.text] = "".join(row.itertext())
    assert values["贸易公司"] == render.two_columns(
        "Buyer", "贸易公司", render.PAPER_COLUMNS[paper]
    )
    for value in ("16.95", "1.95", "15.00", chinese["code"]):
        assert value in values


def _light_around(image: Image.Image, box: tuple[int, int, int, int]) -> int:
    """How many pixels of light surround `box` (left, top, right, bottom; inclusive) before a
    dark pixel or the image's edge, on the narrowest side."""
    left, top, right, bottom = box
    ring = 0
    while True:
        x0, y0, x1, y1 = left - ring - 1, top - ring - 1, right + ring + 1, bottom + ring + 1
        if x0 < 0 or y0 < 0 or x1 >= image.width or y1 >= image.height:
            return ring
        edge = [(x, y0) for x in range(x0, x1 + 1)] + [(x, y1) for x in range(x0, x1 + 1)]
        edge += [(x0, y) for y in range(y0, y1 + 1)] + [(x1, y) for y in range(y0, y1 + 1)]
        if any(image.getpixel(p) < 128 for p in edge):
            return ring
        ring += 1


@pytest.mark.parametrize("paper", [58, 80])
def test_png_qr_modules_encode_the_payload_inside_a_quiet_zone_of_four(
    payload: dict[str, Any], paper: int
) -> None:
    image = Image.open(io.BytesIO(render.png(payload, paper))).convert("L")
    assert image.width == render.PAPER_DOTS[paper]
    code = segno.make(qr.for_document(payload).to_payload(), error="m")
    # Found from the pixels: the lowest dark row is the bottom-left finder's edge, 7 modules.
    dark = [[image.getpixel((x, y)) < 128 for x in range(image.width)] for y in range(image.height)]
    bottom = max(y for y, row in enumerate(dark) if any(row))
    left = dark[bottom].index(True)
    module = next(x for x in range(left, image.width) if not dark[bottom][x]) - left
    assert module % 7 == 0
    module //= 7
    side = len(code.matrix) * module
    top = bottom - side + 1
    for r, row in enumerate(code.matrix):
        for c, is_dark in enumerate(row):
            x, y = left + c * module + module // 2, top + r * module + module // 2
            assert dark[y][x] == bool(is_dark), (r, c)
    quiet = _light_around(image, (left, top, left + side - 1, bottom))
    assert quiet >= 4 * module, (quiet, module)  # ISO/IEC 18004: 4 modules


def test_reports_render_without_a_qr_code(payload: dict[str, Any]) -> None:
    report = dict(
        payload,
        kind="z_report",
        code=None,
        number=None,
        items=[],
        training=False,
        report={
            "z_number": 3,
            "documents": 5,
            "invoices": 4,
            "credits": 1,
            "from_counter": 1,
            "by_rate": [{"tax_rate_bp": 1300, "amount": 1500, "tax": 195}],
        },
    )
    text = render.text(report, 80)
    assert "Z REPORT" in text and "Verify:" not in text and render.TRAINING_BANNER not in text
    assert b"1P0" not in render.escpos(report)


@pytest.fixture
def fonts(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A fresh font lookup (it is cached per process), restored afterwards."""
    render.find_font.cache_clear()
    yield monkeypatch
    render.find_font.cache_clear()


def _fake_fc_match(tmp_path: Path, answer: str) -> str:
    """A directory with an `fc-match` that prints `answer`, to put first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "fc-match"
    script.write_text(f"#!/bin/sh\nprintf '%s' '{answer}'\n")
    script.chmod(0o755)
    return str(bin_dir)


def test_fontconfig_is_asked_first_and_must_cover_chinese(fonts: Any, tmp_path: Path) -> None:
    font = tmp_path / "cjk.ttc"
    font.write_bytes(b"")
    fonts.setenv("PATH", _fake_fc_match(tmp_path, f"{font}\ten|zh-cn|zh-tw"))
    assert render.fc_match("sans", "zh-cn") == str(font)
    assert render.find_font("cjk") == str(font)
    (tmp_path / "bin" / "fc-match").write_text(f"#!/bin/sh\nprintf '%s' '{font}\taa|en'\n")
    assert render.fc_match("sans", "zh-cn") is None  # fc-match's fallback has no CJK glyphs
    fonts.setenv("PATH", str(tmp_path / "nowhere"))
    assert render.fc_match("monospace") is None


def test_without_fontconfig_the_known_paths_are_tried(fonts: Any, tmp_path: Path) -> None:
    known = tmp_path / "wqy-microhei.ttc"
    known.write_bytes(b"")
    fonts.setattr(render, "fc_match", lambda family, lang=None: None)
    fonts.setattr(render, "CJK_FONTS", (str(tmp_path / "absent.ttc"), str(known)))
    assert render.find_font("cjk") == str(known)


def test_no_cjk_font_warns_once_per_receipt_and_still_renders(
    fonts: Any, tmp_path: Path, payload: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    fonts.setattr(render, "fc_match", lambda family, lang=None: None)
    fonts.setattr(render, "CJK_FONTS", (str(tmp_path / "absent.ttc"),))
    with caplog.at_level(logging.WARNING, logger="device.render"):
        image = Image.open(io.BytesIO(render.png(dict(payload, buyer={"name": "贸易公司"}))))
    assert image.width == render.PAPER_DOTS[80]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no CJK font found" in warnings[0], warnings
    assert "\n" not in warnings[0]


def test_png_draws_cjk_characters_not_boxes(fonts: Any, payload: dict[str, Any]) -> None:
    """The receipt's 发票 and a CJK buyer name print with a font that has those glyphs
    (fontconfig's, else a known path; .ci/run installs fonts-wqy-microhei), where Pillow's
    built-in font would draw the same box for each."""
    from PIL import ImageFont

    path = render.find_font("cjk")
    if path is None:
        pytest.skip("no CJK font installed (fonts-wqy-microhei or fonts-noto-cjk)")
    font = ImageFont.truetype(path, 24)
    box = bytes(font.getmask("\U0010fffd"))  # a private-use code point: the missing glyph
    for char in "发票税务测试":
        assert font.getmask(char).getbbox() and bytes(font.getmask(char)) != box, char
    cjk = {**payload, "buyer": {**payload["buyer"], "name": "税务测试有限公司"}}
    drawn = render.png(cjk)
    chosen = render._font

    def builtin_cjk(kind: str, size: int) -> Any:
        return ImageFont.load_default(size=size) if kind == "cjk" else chosen(kind, size)

    fonts.setattr(render, "_font", builtin_cjk)
    assert render.png(cjk) != drawn  # the CJK font, not the built-in one, drew them
