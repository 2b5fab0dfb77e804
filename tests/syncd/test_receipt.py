"""The POS API's document JSON prints the printer's signed QR payload (offline 查验) once it
is checked against the document, and the issue time in the shop's zone."""

from __future__ import annotations

import json
from pathlib import Path

from device.app import open_device
from device.limits import Limits
from device.protocol import qr
from device.protocol.document import parse_document
from syncd.api import _dumps
from syncd.receipt import document_json
from tests.device.conftest import INVOICE


def test_the_receipt_carries_the_devices_qr_only_when_it_checks(tmp_path: Path) -> None:
    limits = Limits(offline_seconds=10**9, offline_amount=10**15)
    fw = open_device(tmp_path / "state", training=True, limits=limits)
    try:
        response = fw.issue(INVOICE)
        document = parse_document(response["document"])
        key = fw.key.public_key
        out = document_json(document, response, 80, key)
        assert out["receipt"]["qr"] == response["qr"] and "&s=" in response["qr"]
        printed = out["receipt"]["text"].split("\nVerify:\n")[1]  # wrapped to the paper
        assert "".join(printed.splitlines()) == response["qr"]
        assert " +08:00" in out["receipt"]["text"]
        unsigned = qr.for_document(document.payload).to_payload()
        query = qr.parse(response["qr"])
        assert query.total is not None
        edited = qr.VerificationQuery(
            code=query.code,
            number=query.number,
            date=query.date,
            check_code=query.check_code,
            total=query.total + 1,
            training=query.training,
            device_id=query.device_id,
            doc_hash=query.doc_hash,
            signature=query.signature,
        ).to_payload()
        for bad, public_key in [
            (edited, key),  # not this document's fields
            (response["qr"], b"\x00" * 32),  # not the device's signature
            ("x" * 5000, key),
            (None, key),
        ]:
            fallback = document_json(document, {**response, "qr": bad}, 80, public_key)
            assert fallback["receipt"]["qr"] == unsigned
    finally:
        fw.journal.close()


def test_the_answers_json_is_what_json_dumps_gives(tmp_path: Path) -> None:
    """syncd's kept encoder writes the same text as json.dumps(..., ensure_ascii=False),
    for invoices with CJK names, credit notes, both papers, and refusal bodies."""
    limits = Limits(offline_seconds=10**9, offline_amount=10**15)
    fw = open_device(tmp_path / "state", training=True, limits=limits)
    try:
        cjk = {
            "buyer": {"name": "深圳港湾物流股份有限公司北方分公司驻上海办事处"},
            "items": [
                {
                    "name": "有机绿茶 250克 特级",
                    "quantity": "2",
                    "unit_price": 4500,
                    "tax_rate_bp": 1300,
                }
            ],
        }
        answers = [fw.issue(INVOICE), fw.issue(cjk)]
        refers = {"code": answers[1]["code"], "number": answers[1]["number"]}
        answers.append(fw.credit({"refers_to": refers, "reason": '退货 "returned"'}))
        key = fw.key.public_key
        values: list[object] = [
            document_json(parse_document(answer["document"]), answer, paper, key)
            for answer in answers
            for paper in (58, 80)
        ]
        values += [{"error": "bad_request", "message": "贸\u2028\x00", "detail": None}, [1.5, -0.0]]
        for value in values:
            assert _dumps(value) == json.dumps(value, ensure_ascii=False)
    finally:
        fw.close()
