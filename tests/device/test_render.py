"""Receipts in every output format carry the invoice and a QR code a verifier can read."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from typing import Any

import pytest
import segno
from PIL import Image

from device import render
from device.protocol import codec, cose, qr
from device.protocol.framing import decode_frame
from tests.vectors.generate import generate


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
    body = lines[: lines.index("Verify:")]
    assert all(render.display_width(line) <= width for line in body)
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
    assert qr.parse(lines[-1]) == qr.for_document(payload)


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
    texts = [t.text for t in document.iter("{http://www.w3.org/2000/svg}text")]
    assert any(t and "TOTAL" in t and "16.95" in t for t in texts)
    assert document.findall(".//{http://www.w3.org/2000/svg}path"), "no QR code drawn"


@pytest.mark.parametrize("paper", [58, 80])
def test_png_qr_modules_encode_the_verification_payload(
    payload: dict[str, Any], paper: int
) -> None:
    image = Image.open(io.BytesIO(render.png(payload, paper))).convert("L")
    assert image.width == render.PAPER_DOTS[paper]
    code = segno.make(qr.for_document(payload).to_payload(), error="m")
    modules = code.symbol_size(scale=1, border=0)[0]
    side = (modules + 4) * 5
    lines = len(render.Receipt(payload).lines(render.PAPER_COLUMNS[paper]))
    top = render.MARGIN_PX + lines * render.LINE_PX + render.MARGIN_PX // 2
    left = (image.width - side) // 2
    for r, row in enumerate(code.matrix):
        for c, dark in enumerate(row):
            pixel = image.getpixel((left + (c + 2) * 5 + 2, top + (r + 2) * 5 + 2))
            assert (pixel < 128) == bool(dark), (r, c)


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
