"""syncd.posclient: the POS API's rules (one key per sale reused by every retry, which
answers are retried, Retry-After, bounded attempts) and its typed answers, against a real
shop and against a scripted server."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from device.errors import TaxctlError
from device.protocol import untrusted
from device.protocol.invoice import CreditRequest, InvoiceRequest, Line
from syncd import posclient
from syncd.posclient import AsyncPosClient, PosClient, PosError, RetryPolicy
from tests.shop import INVOICE, Shop

FAST = RetryPolicy(attempts=4, total=10.0, backoff=0.0, max_pause=0.0)


def test_a_shop_through_the_sync_client(shop: Shop) -> None:
    shop.start_chain()
    shop.start_device()
    shop.start_syncd()
    with PosClient(shop.api) as pos:
        invoice = pos.issue_invoice(INVOICE, paper=58)
        assert invoice.kind == "invoice" and invoice.counter == 1 and not invoice.retry
        assert invoice.idempotency_key and invoice.cose_sign1 and invoice.receipt_text
        again = pos.issue_invoice(INVOICE, idempotency_key=invoice.idempotency_key)
        assert (again.counter, again.retry) == (1, True)  # the same document, not a second
        by_counter = pos.reprint(invoice.counter)
        by_number = pos.reprint(code=invoice.code, number=invoice.number)
        assert by_counter.cose_sign1 == by_number.cose_sign1 == invoice.cose_sign1
        ref = {"code": invoice.code, "number": invoice.number}
        note = pos.issue_credit_note({"refers_to": ref, "reason": "returned"})
        assert (note.kind, note.total) == ("credit", -(invoice.total or 0))
        # The printer API's typed requests go as they are: the POS body is the device's.
        typed = pos.issue_invoice(InvoiceRequest(None, [Line.of("Tea", "2", 500, 1300)]))
        assert (typed.kind, typed.counter, typed.total) == ("invoice", 3, 1130)
        credit = CreditRequest(typed.code or "", typed.number or "", "void", None)
        assert pos.issue_credit_note(credit).total == -1130
        assert pos.x_report().kind == "x_report"
        status = pos.status()
        assert status.can_issue and status.devices[0]["device_id"] == invoice.device_id
        assert pos.health().ok
        bad = {**INVOICE, "items": [{**INVOICE["items"][0], "tax_rate_bp": 1234}]}
        with pytest.raises(PosError) as refused:
            pos.issue_invoice(bad)
        assert (refused.value.code, refused.value.status) == ("UNKNOWN_TAX_RATE", 422)
        assert isinstance(refused.value, TaxctlError)  # one base for the whole API
        assert not refused.value.retryable and refused.value.idempotency_key
        with pytest.raises(PosError) as missing:
            pos.reprint(99)
        assert (missing.value.code, missing.value.status) == ("NOT_FOUND", 404)


async def test_the_async_client_over_the_unix_socket_with_a_token(
    shop: Shop, tmp_path: Path
) -> None:
    token = tmp_path / "pos.token"
    token.write_text("t" * 32)
    token.chmod(0o600)
    sock = tmp_path / "api.sock"
    shop.api_headers = {"Authorization": f"Bearer {'t' * 32}"}
    shop.start_chain()
    shop.start_device()
    shop.start_syncd("--api-socket", str(sock), "--api-token-file", str(token))
    async with AsyncPosClient(f"unix:{sock}", token="t" * 32) as pos:
        invoice = await pos.issue_invoice(INVOICE)
        assert invoice.counter == 1
        assert (await pos.reprint(code=invoice.code, number=invoice.number)).counter == 1
        assert (await pos.status()).devices[0]["device_id"] == invoice.device_id
    async with AsyncPosClient(f"unix:{sock}") as anonymous:
        with pytest.raises(PosError) as refused:
            await anonymous.issue_invoice(INVOICE)
        assert (refused.value.code, refused.value.status) == ("UNAUTHORIZED", 401)


# --- the retry rules, against a server that answers from a script --------------------------


class Scripted(BaseHTTPRequestHandler):
    script: ClassVar[list[tuple[int, dict[str, Any], dict[str, str]]]] = []
    seen: ClassVar[list[dict[str, str]]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.seen.append(dict(self.headers))
        status, body, headers = self.script.pop(0) if self.script else (201, {}, {})
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Scripted.script, Scripted.seen = [], []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


ISSUED = {"kind": "invoice", "counter": 7, "idempotency_key": "k", "retry": True}


def refusal(code: str, status: int = 503, retry_after: str | None = "0") -> Any:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return (status, {"error": code, "message": "m"}, headers)


def test_retryable_answers_are_asked_again_with_the_same_key(
    scripted: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pauses: list[float] = []
    monkeypatch.setattr(posclient.time, "sleep", pauses.append)
    Scripted.script = [
        refusal("OUTCOME_UNKNOWN", retry_after="2"),
        refusal("DEVICE_OFFLINE", retry_after="60"),
        (200, ISSUED, {}),
    ]
    policy = RetryPolicy(attempts=5, total=100.0, max_pause=5.0)
    with PosClient(scripted, retry=policy) as pos:
        doc = pos.issue_invoice(INVOICE)
    assert doc.counter == 7 and doc.retry
    keys = {h["Idempotency-Key"] for h in Scripted.seen}
    assert len(Scripted.seen) == 3 and len(keys) == 1
    assert pauses == [2.0, 5.0]  # Retry-After, at most max_pause


def test_a_refusal_that_needs_a_person_is_not_retried(scripted: str) -> None:
    Scripted.script = [refusal("PAPER_OUT", retry_after="5")]
    with PosClient(scripted, retry=FAST) as pos, pytest.raises(PosError) as refused:
        pos.issue_invoice(INVOICE)
    assert (refused.value.code, refused.value.retry_after) == ("PAPER_OUT", 5.0)
    assert len(Scripted.seen) == 1


def test_attempts_are_bounded(scripted: str) -> None:
    Scripted.script = [refusal("OUTCOME_UNKNOWN")] * 10
    with PosClient(scripted, retry=FAST) as pos, pytest.raises(PosError) as refused:
        pos.issue_invoice(INVOICE, idempotency_key="sale-1")
    assert refused.value.code == "OUTCOME_UNKNOWN" and refused.value.maybe_issued
    assert refused.value.idempotency_key == "sale-1"
    assert len(Scripted.seen) == FAST.attempts


def test_no_answer_is_retried_then_outcome_unknown() -> None:
    policy = RetryPolicy(attempts=3, backoff=0.01)
    with PosClient("http://127.0.0.1:9", retry=policy) as pos, pytest.raises(PosError) as silent:
        pos.issue_invoice(INVOICE, idempotency_key="sale-2")
    assert silent.value.status == 0 and silent.value.maybe_issued
    assert silent.value.idempotency_key == "sale-2"


async def test_the_async_client_retries_with_the_same_key() -> None:
    keys: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        keys.append(request.headers["Idempotency-Key"])
        if len(keys) < 3:
            return web.json_response(
                {"error": "SHUTTING_DOWN", "message": "m"}, status=503, headers={"Retry-After": "0"}
            )
        return web.json_response(ISSUED, status=201)

    app = web.Application()
    app.router.add_post("/v1/invoices", handler)
    server = TestServer(app, host="127.0.0.1")
    async with server, AsyncPosClient(f"http://127.0.0.1:{server.port}", retry=FAST) as pos:
        doc = await pos.issue_invoice(INVOICE)
    assert doc.counter == 7 and len(keys) == 3 and len(set(keys)) == 1


def test_a_request_is_a_mapping_or_a_typed_request() -> None:
    with pytest.raises(TypeError):
        posclient.request_body(42)
    with pytest.raises(ValueError):
        posclient.reprint_call(1, "1" * 12, "1" * 8, None, None)
    with pytest.raises(ValueError):
        PosClient("ftp://x")


def test_an_answer_not_in_the_api_form_is_no_crash(scripted: str) -> None:
    Scripted.script = [
        (201, {"counter": True, "cose_sign1": "not base64!", "kind": ["x"]}, {}),
        (400, {"error": {"nested": "x" * 1000}}, {}),
    ]
    with PosClient(scripted, retry=FAST) as pos:
        odd = pos.issue_invoice(INVOICE)
        assert (odd.counter, odd.cose_sign1, odd.kind) == (None, None, None)
        with pytest.raises(PosError) as refused:
            pos.issue_invoice(INVOICE)
    assert (refused.value.code, refused.value.status) == ("BAD_REQUEST", 400)
    assert len(str(refused.value)) < 300


# --- answers: decoded under the bounds, however they arrive --------------------------------


async def test_an_answer_in_several_segments_is_read_whole() -> None:
    """A read of aiohttp's stream gives only what has arrived: an answer whose body comes in
    two segments was cut to its first and refused as not the API's body."""
    body = json.dumps({**ISSUED, "receipt": {"text": "x" * 5000}}).encode()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
        writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body[:100])
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(body[100:])
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with AsyncPosClient(f"http://127.0.0.1:{port}", retry=FAST) as pos:
            doc = await pos.issue_invoice(INVOICE)
    finally:
        server.close()
        await server.wait_closed()
    assert (doc.counter, doc.receipt_text) == (7, "x" * 5000)


def _issued_answer(lines: int) -> dict[str, Any]:
    """An answer shaped like syncd's to a sale of `lines` lines."""
    item = {"tax": 77940, "name": "Software licence", "amount": 1299000, "quantity": "10"}
    document = {
        "kind": "invoice",
        "buyer": {"name": "Xiamen Seaview Hotel", "tax_id": "913777631706690744"},
        "items": [{**item, "name": f"个人 {n}"} for n in range(lines)],
        "seller": {"name": "Training Taxpayer", "tax_id": "914403000000TRN01C"},
        "prev_hash": "0" * 64,
    }
    receipt = {
        "text": "*** TRAINING ***\n----\n  INVOICE 发票\n\t¥13,825.40\n",
        "qr": "taxctl:v1?c=9",
    }
    return {
        **ISSUED,
        "cose_sign1": "0oRDoQEnoQROVEMzV0FJ",
        "document": document,
        "receipt": receipt,
    }


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(st.characters(codec=None, exclude_categories=()), max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES, st.booleans())
def test_the_answer_decoder_agrees_with_loads_json_on_any_value(value: Any, ascii: bool) -> None:
    """Surrogates, NaN, floats and nesting as json.dumps writes them (the lone surrogates
    only as escapes, or as bytes through surrogatepass)."""
    text = json.dumps(value, ensure_ascii=ascii)
    raw = text.encode("utf-8", "surrogatepass")
    assert _refusal_or_value(posclient.loads_answer, raw) == _refusal_or_value(_old_loads, raw)


def _refusal_or_value(decode: Callable[[bytes], Any], raw: bytes) -> Any:
    try:
        return ("value", decode(raw))
    except untrusted.InputRefused as refused:
        return ("refused", str(refused))


def _old_loads(raw: bytes) -> Any:
    return untrusted.loads_json(raw, posclient.ANSWER)


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


ODD_ANSWERS = [
    b"",
    b" ",
    b"{}",
    b"[]",
    b"1",
    b"1.5e3",
    b'"text"',
    b"null",
    b"NaN",
    b"[Infinity]",
    b'{"a": -Infinity}',
    b'{"a": 1} x',
    b'{"a": 1}  \n',
    b"1\x00",
    b"\x00\x001",
    b'"\xed\xa0\x80"',  # a surrogate encoded in UTF-8
    b'"\\ud800"',  # a lone surrogate as an escape
    b'{"\\udc00": 1}',
    b'"\\uD83D\\uDE00"',  # a pair: one character
    b'"\\\\ud800"',  # an escaped backslash, then text
    b'"\\u00e9\\u4e2a"',
    '{"name": "个人"}'.encode(),
    b'"\xff"',
    "\ufeff{}".encode(),
    '{"a": [1, 2]}'.encode("utf-16"),
    '{"a": [1, 2]}'.encode("utf-16-le"),
    '{"a": [1, 2]}'.encode("utf-32"),
    _nested(16),
    _nested(17),
    b'{"a": ' * 15 + b"{}" + b"}" * 15,
    b'{"a": ' * 16 + b"{}" + b"}" * 16,
    _nested(5000),
    b'"' + b"[" * 40 + b'"',  # brackets in a string nest nothing
    b"[" + b"0," * 9998 + b"0]",  # 10,000 items, under 20,000 bytes
    b"[" + b"0," * 19_999 + b"0]",  # 20,001 items
    b"[" + b"1" * 5000 + b"]",  # int() over 4300 digits
    b'{"a": 1, "a": 2}',
    b'{"a": 1e999, "b": -1e999, "c": -0, "d": -0.0}',  # floats out of range: infinities
    b'{"a": ' + _nested(20) + b', "a": 1}',  # the deep value is replaced: nothing deep
    b'{"a": 1, "a": ' + _nested(20) + b"}",
    b"[" * 16 + b'"]]]]"' + b"]" * 16,  # brackets in a string, at the depth bound
]


def test_the_answer_decoder_agrees_with_loads_json() -> None:
    """posclient.loads_answer skips loads_json's walk where the bytes prove it: the same value
    or the same refusal, for the API's answers and for odd ones."""
    answers = [ISSUED, {"seconds": 0.25, "chain": {"state": "ok"}}]
    answers += [_issued_answer(lines) for lines in (1, 6, 40)]
    recorded = [json.dumps(value, ensure_ascii=False).encode() for value in answers]
    recorded += [json.dumps(value).encode() for value in answers]  # \u escapes
    for raw in recorded + ODD_ANSWERS:
        assert _refusal_or_value(posclient.loads_answer, raw) == _refusal_or_value(
            _old_loads, raw
        ), raw[:80]


def test_a_key_made_up_by_the_client_is_a_uuid4_in_hex() -> None:
    keys = {posclient.issuing_call("invoices", INVOICE, device=None, paper=None, key=None).key}
    keys |= {posclient._new_key() for _ in range(2000)}
    assert len(keys) == 2001
    for key in keys:
        assert key is not None
        parsed = uuid.UUID(hex=key)
        assert (parsed.hex, parsed.version, parsed.variant) == (key, 4, uuid.RFC_4122)
