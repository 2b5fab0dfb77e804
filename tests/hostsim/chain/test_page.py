"""The 查验 page (`GET /verify`): the form, each answer a buyer can get, bad input as a 400
page with the reason, and everything from the request or the ledger escaped."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace
from html import escape
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from device.protocol import qr
from device.protocol.document import Document, parse_document
from device.render import local_time
from hostsim.chain.api import build_app
from hostsim.chain.page import ZONE, render_answer, shown_time, yuan
from tests.hostsim.chain.conftest import BUYER_TAX_ID, Api, DeviceSim, invoice_body


async def page(api: Api, params: dict[str, str] | None = None) -> tuple[int, str]:
    async with api.session.get(api.url("/verify"), params=params or {}) as resp:
        assert resp.content_type == "text/html" and resp.charset == "utf-8", resp.headers
        assert "script-src" not in resp.headers["Content-Security-Policy"]
        assert resp.headers["Referrer-Policy"] == "no-referrer"
        return resp.status, await resp.text()


def result_of(text: str) -> str:
    found = re.findall(r'id="result"[^>]*data-result="([a-z_]+)"', text)
    assert len(found) == 1, text
    return str(found[0])


def shown(text: str, ident: str) -> str:
    """The text of the element with this id (the page puts details in leaf elements)."""
    match = re.search(rf'id="{ident}"[^>]*>([^<]*)<', text)
    assert match is not None, (ident, text)
    return match[1]


def typed(doc: Document, **changes: str) -> dict[str, str]:
    fields = {
        "c": str(doc.code),
        "n": str(doc.number),
        "d": doc.payload["issued_at"][:10],
        "k": str(doc.check_code)[-6:],
    }
    return fields | changes


async def committed(api: Api, device: DeviceSim, count: int = 1, **kwargs: Any) -> list[Document]:
    await api.register(device)
    raws = device.issue(count, **kwargs)
    assert {r["status"] for r in await api.submit(raws)} == {"committed"}
    return [parse_document(raw) for raw in raws]


async def test_the_form_alone(api: Api) -> None:
    status, text = await page(api)
    assert status == 200
    assert 'id="result"' not in text
    assert "查验 / Verify" in text and 'name="q"' in text
    assert all(f'name="{name}"' in text for name in "cndk")
    assert 'id="training-chain"' in text  # the test chain is a training chain
    # a query string with nothing the page knows is the form too
    assert await page(api, {"utm_source": "x"}) == (200, text)


async def test_authentic_by_typed_fields_and_by_payload(api: Api, device: DeviceSim) -> None:
    [doc] = await committed(api, device)
    status, text = await page(api, typed(doc))
    assert (status, result_of(text)) == (200, "authentic")
    assert shown(text, "seller") == escape(doc.payload["seller"]["name"])
    assert shown(text, "seller-tax-id") == doc.payload["seller"]["tax_id"]
    assert shown(text, "invoice") == f"{doc.code}/{doc.number}"
    issued = doc.payload["issued_at"]
    assert shown(text, "issued-at") == f"{local_time(issued, 'Asia/Shanghai')} (Asia/Shanghai)"
    assert f'id="issued-at" data-utc="{issued}"' in text  # the machine field stays UTC
    assert shown(text, "total") == f"¥{doc.total // 100}.{doc.total % 100:02d}"
    assert shown(text, "height") == str(api.chain.ledger.tx(doc.hash).height)  # type: ignore[union-attr]
    assert shown(text, "claimed") == "未报销 / no"
    assert "training document — not a valid invoice" in shown(text, "training")
    assert re.findall(r'data-event="(\w+)"', text) == ["issued"]

    payload = qr.for_document(doc.payload).to_payload()
    status, by_payload = await page(api, {"q": f"  {payload}\n"})
    assert (status, result_of(by_payload)) == (200, "authentic")
    assert shown(by_payload, "total") == shown(text, "total")
    # the whole check code, and the long names of /v1/verify, work as well
    long = {"code": str(doc.code), "number": str(doc.number), "date": typed(doc)["d"]}
    status, text = await page(api, long | {"check_code": str(doc.check_code)})
    assert (status, result_of(text)) == (200, "authentic")
    # a pasted payload wins over typed fields; a blank payload does not
    status, text = await page(api, typed(doc, n="00000000") | {"q": payload})
    assert result_of(text) == "authentic"
    status, text = await page(api, typed(doc) | {"q": "  "})
    assert result_of(text) == "authentic"


async def test_not_found_and_mismatch(api: Api, device: DeviceSim) -> None:
    [doc] = await committed(api, device)
    status, text = await page(api, typed(doc, n="99999999"))
    assert (status, result_of(text)) == (200, "not_found")
    assert f"{doc.code}/99999999" in text and 'id="seller"' not in text

    status, text = await page(api, typed(doc, k="000000"))
    assert (status, result_of(text)) == (200, "mismatch")
    assert re.search(r'id="mismatched" data-fields="check_code"', text), text
    assert "校验码 / check code" in text and 'id="seller"' not in text
    assert 'id="training"' in text

    status, text = await page(api, typed(doc, k="0" * 20, d="2020-01-01"))
    assert re.search(r'id="mismatched" data-fields="date check_code"', text), text
    fields = dict(typed(doc), t=str(doc.total + 1))
    del fields["k"]
    status, text = await page(api, fields)
    assert (status, result_of(text)) == (200, "mismatch")
    assert 'data-fields="total"' in text


async def test_already_claimed_is_shown_as_such(api: Api, device: DeviceSim) -> None:
    [doc, other] = await committed(api, device, 2, buyer_tax_id=BUYER_TAX_ID)
    admin = {"Authorization": f"Bearer {api.chain.bureau.admin_token}"}
    status, buyer = await api.call(
        "POST", "/v1/buyers", json={"tax_id": BUYER_TAX_ID, "name": "Buyer Co"}, headers=admin
    )
    assert status == 201, buyer
    status, claim = await api.call(
        "POST",
        f"/v1/invoices/{doc.code}/{doc.number}/claim",
        headers={"Authorization": f"Bearer {buyer['api_key']}"},
    )
    assert status == 201, claim
    status, text = await page(api, typed(doc))
    assert (status, result_of(text)) == (200, "claimed")
    assert 'data-claimed="true"' in text
    assert "Already claimed for reimbursement" in text and "已报销" in text
    assert shown(text, "claimed") == "已报销 / yes"
    assert re.findall(r'data-event="(\w+)"', text) == ["issued", "claimed"]
    assert buyer["buyer_id"] not in text  # who claimed it is not the public's business
    # its neighbour, not claimed, is plainly authentic
    status, text = await page(api, typed(other))
    assert (result_of(text), 'data-claimed="false"' in text) == ("authentic", True)


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"q": "nonsense"}, "starts with"),
        ({"q": "taxctl:v1?c=1&n=2&d=3&k=4"}, "12 digits"),
        ({"c": "abc", "n": "00000001", "d": "2026-01-01", "k": "123456"}, "12 digits"),
        ({"c": "044031900111", "n": "1", "d": "2026-01-01", "k": "123456"}, "8 digits"),
        ({"c": "044031900111", "n": "00000001", "d": "26-1-1", "k": "123456"}, "YYYY-MM-DD"),
        ({"c": "044031900111", "n": "00000001", "d": "2026-01-01", "k": "12345"}, "last 6"),
        ({"c": "044031900111", "n": "00000001", "d": "2026-01-01", "k": "١٢٣٤٥٦"}, "last 6"),
        ({"c": "044031900111", "n": "00000001", "d": "2026-01-01"}, "check code"),
        ({"c": "044031900111", "n": "00000001", "d": "2026-01-01", "t": "1.5"}, "fen"),
        ({"c": "", "n": "", "d": "", "k": ""}, "paste the QR payload"),
        ({"q": " "}, "paste the QR payload"),
    ],
)
async def test_bad_input_is_a_400_page_with_the_reason(
    api: Api, params: dict[str, str], reason: str
) -> None:
    status, text = await page(api, params)
    assert (status, result_of(text)) == (400, "error")
    assert 'data-code="bad_request"' in text
    assert reason in shown(text, "error")
    assert 'name="q"' in text and 'name="c"' in text  # the form again, to correct


async def test_hostile_input_is_escaped(api: Api) -> None:
    hostile = "<script>alert(1)</script>"
    status, text = await page(api, {"q": f"taxctl:v1?{hostile}=1"})
    assert status == 400
    assert "<script" not in text
    assert escape(hostile) in text  # in the textarea
    assert "&lt;script&gt;" in shown(text, "error")  # the reason names the unknown field
    status, text = await page(api, {"c": f'"><img src=x onerror=alert(1)>{hostile}', "k": "1"})
    assert status == 400
    assert "<script" not in text and "<img" not in text
    assert 'value="&quot;&gt;&lt;img' in text


def test_the_answer_escapes_what_the_ledger_holds() -> None:
    hostile = '<script>alert("x")</script>'
    answer = {
        "result": "authentic",
        "code": "044031900111",
        "number": "00000001",
        "training": False,
        "state": "issued",
        "issued_at": "2026-01-01T00:00:00Z",
        "total": 1130,
        "seller": {"name": hostile, "tax_id": hostile},
        "height": 3,
        "claimed": False,
    }
    history = [{"height": 3, "at": hostile, "event": hostile, "buyer_id": hostile}]
    text = render_answer(answer, history)
    assert "<script" not in text
    assert text.count(escape(hostile)) >= 4
    assert 'id="training"' not in text
    mismatch = render_answer({"result": "mismatch", "mismatched": [hostile], "code": "1"}, [])
    assert "<script" not in mismatch


def test_yuan_has_two_decimals_from_integers() -> None:
    assert [yuan(f) for f in (0, 5, 130, 123456, -150)] == [
        "0.00",
        "0.05",
        "1.30",
        "1234.56",
        "-1.50",
    ]


async def test_offline_verification_on_the_page(api: Api, device: DeviceSim) -> None:
    """A pasted QR the printer signed: not yet uploaded (with the deadline), forged when
    tampered with, authentic once uploaded."""
    await api.register(device)
    response = device.fw.issue(invoice_body(buyer_tax_id=BUYER_TAX_ID))
    raw = device._commit()[0]
    payload = str(response["qr"])
    status, text = await page(api, {"q": payload})
    assert (status, result_of(text)) == (200, "not_yet_uploaded")
    assert shown(text, "device") == device.device_id
    assert shown(text, "upload-by").endswith(" 08:00:00 +08:00 (Asia/Shanghai)")
    assert re.search(r'id="upload-by" data-utc="[-\d]+T00:00:00Z"', text), text
    assert BUYER_TAX_ID not in text
    tampered = qr.parse(payload)
    assert tampered.total is not None
    forged = replace(tampered, total=tampered.total + 1).to_payload()
    status, text = await page(api, {"q": forged})
    assert (status, result_of(text)) == (200, "forged")
    assert "signature" in shown(text, "reason")
    assert {r["status"] for r in await api.submit([raw])} == {"committed"}
    status, text = await page(api, {"q": payload})
    assert (status, result_of(text)) == (200, "authentic")


AUTHENTIC = {
    "result": "authentic",
    "code": "044031900111",
    "number": "00000001",
    "state": "issued",
    "issued_at": "2026-01-01T00:00:00Z",
    "total": 1130,
    "seller": {"name": "Shop", "tax_id": "91440300MA5XXXXX0X"},
    "height": 3,
}


def test_times_are_in_the_zone_asked_for_and_named_machine_fields_stay_utc() -> None:
    history = [{"height": 3, "at": "2026-01-01T00:00:00Z", "event": "issued", "total": 1130}]
    text = render_answer(AUTHENTIC, history, "Europe/Berlin")
    assert shown(text, "issued-at") == "2026-01-01 01:00:00 +01:00 (Europe/Berlin)"
    assert text.count('data-utc="2026-01-01T00:00:00Z"') == 2  # the detail and the history
    assert '<td><span data-utc="2026-01-01T00:00:00Z">2026-01-01 01:00:00 +01:00' in text
    assert "时间 / Time (Europe/Berlin)" in text and "(UTC)" not in text
    default = render_answer(AUTHENTIC, history)
    assert shown(default, "issued-at") == "2026-01-01 08:00:00 +08:00 (Asia/Shanghai)"
    # what is not a ledger time is shown as it is, escaped, not turned into an error
    assert shown_time("<b>", "Asia/Shanghai") == "<b>"


def test_codes_numbers_and_tax_ids_never_wrap_only_names_do() -> None:
    text = render_answer(AUTHENTIC, [])
    for ident in ("seller-tax-id", "invoice", "total", "height"):
        assert f'id="{ident}" class="nw"' in text
    assert 'id="seller" class="name"' in text
    assert "word-break" not in text


async def test_the_page_uses_the_chain_s_zone(api: Api, device: DeviceSim) -> None:
    [doc] = await committed(api, device)
    app = build_app(api.chain)
    app[ZONE] = "America/New_York"  # what `hostsim chain --zone` sets
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        status, text = await page(Api(api.chain, server, api.session), typed(doc))
    finally:
        await server.close()
    assert (status, result_of(text)) == (200, "authentic")
    assert shown(text, "issued-at").endswith(" (America/New_York)")
    assert f'data-utc="{doc.payload["issued_at"]}"' in text


def test_a_bad_zone_is_a_one_line_error(tmp_path: Path) -> None:
    chain = ["hostsim", "chain", "--data", str(tmp_path / "c"), "--listen", "127.0.0.1:0"]
    run = subprocess.run(
        [sys.executable, "-m", "taxctl", *chain, "--zone", "Mars/Olympus_Mons"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.splitlines() == [
        'taxctl hostsim chain: --zone: unknown time zone "Mars/Olympus_Mons" '
        "(an IANA name such as Asia/Shanghai)"
    ]
