"""syncd.posclient: the POS API's rules (one key per sale reused by every retry, which
answers are retried, Retry-After, bounded attempts) and its typed answers, against a real
shop and against a scripted server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from device.errors import TaxctlError
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
        bad = {**INVOICE, "items": [{**INVOICE["items"][0], "tax_rate_bp": 1234}]}  # type: ignore[dict-item]
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
