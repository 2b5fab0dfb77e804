"""`taxctl verify` against a real chain process: each answer and its exit code, and a clear
one-line error (no traceback) when the question cannot be asked or the chain cannot answer."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from device.protocol import qr
from device.protocol.document import Document, parse_document
from taxctl_base.processes import http
from tests.helpers import Process, run_taxctl, spawn
from tests.hostsim.chain.conftest import BUYER_TAX_ID, DeviceSim, b64, invoice_body


def post(url: str, body: dict[str, Any], token: str | None = None) -> tuple[int, Any]:
    return http("POST", url, body, token=token)


@dataclass
class LiveChain:
    """A training chain process with a registered device and committed invoices."""

    root: Path
    verify_per_minute: int = 600  # the module's questions all come from one address
    proc: Process = field(init=False)
    device: DeviceSim = field(init=False)
    offline: list[bytes] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.proc = spawn(
            [
                "hostsim",
                "chain",
                "--data",
                str(self.root / "ledger"),
                "--listen",
                "127.0.0.1:0",
                "--training",
                "--block-interval-ms",
                "5",
                "--verify-per-minute",
                str(self.verify_per_minute),
            ],
            stderr=self.root / "chain.log",
        )
        self.url: str = self.proc.ready["url"]
        self.device = DeviceSim(self.root / "device")
        status, body = post(
            f"{self.url}/v1/devices",
            {
                "certificate": b64(self.device.certificate),
                "segments": [b64(s) for s in self.device.segments],
            },
        )
        assert status == 201, body

    def issue(self, count: int = 1) -> list[Document]:
        raws = self.device.issue(count, buyer_tax_id=BUYER_TAX_ID)
        status, body = post(f"{self.url}/v1/documents", {"documents": [b64(r) for r in raws]})
        assert status == 200 and body["counts"] == {"committed": count}, body
        return [parse_document(raw) for raw in raws]

    def issue_offline(self) -> str:
        """An invoice the printer signed but nobody uploaded: its receipt's QR payload."""
        response = self.device.fw.issue(invoice_body(buyer_tax_id=BUYER_TAX_ID))
        self.offline.append(self.device._commit()[0])
        return str(response["qr"])

    def upload(self) -> None:
        raws, self.offline = self.offline, []
        status, body = post(f"{self.url}/v1/documents", {"documents": [b64(r) for r in raws]})
        assert status == 200 and body["counts"] == {"committed": len(raws)}, body

    def claim(self, doc: Document) -> None:
        admin = Path(self.proc.ready["admin_token_file"]).read_text().strip()
        buyer = {"tax_id": BUYER_TAX_ID, "name": "Buyer Co"}
        status, body = post(f"{self.url}/v1/buyers", buyer, token=admin)
        assert status == 201, body
        path = f"{self.url}/v1/invoices/{doc.code}/{doc.number}/claim"
        status, claim = post(path, {}, token=body["api_key"])
        assert status == 201, claim

    def stop(self) -> None:
        try:
            self.proc.stop()
        finally:
            self.device.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveChain]:
    chain = LiveChain(tmp_path_factory.mktemp("verify-cli"))
    try:
        yield chain
    finally:
        chain.stop()


def verify(*args: str) -> subprocess.CompletedProcess[str]:
    return run_taxctl("verify", *args)


def typed(doc: Document, **changes: str) -> list[str]:
    fields = {
        "code": str(doc.code),
        "number": str(doc.number),
        "date": doc.payload["issued_at"][:10],
        "check-code": str(doc.check_code)[-6:],
    } | changes
    return [arg for name, value in fields.items() for arg in (f"--{name}", value)]


def one_line_error(out: subprocess.CompletedProcess[str], *words: str) -> None:
    assert out.stdout == "", out.stdout
    assert out.stderr.startswith("taxctl verify: ") and out.stderr.count("\n") == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert all(w in out.stderr for w in words), out.stderr


def test_authentic_by_typed_fields_and_by_payload(live: LiveChain) -> None:
    [doc] = live.issue()
    out = verify("--chain", live.url, *typed(doc))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("authentic"), out.stdout
    total = f"¥{doc.total // 100}.{doc.total % 100:02d}"
    for text in (doc.payload["seller"]["name"], total, "claimed:  no", "training: yes"):
        assert text in out.stdout, (text, out.stdout)

    payload = qr.for_document(doc.payload).to_payload()
    out = verify("--chain", live.url, "--payload", payload, "--json")
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["result"] == "authentic" and answer["training"] is True
    assert (answer["total"], answer["claimed"]) == (doc.total, False)

    yuan = f"{doc.total // 100}.{doc.total % 100:02d}"
    out = verify("--chain", live.url, *typed(doc)[:6], "--total", yuan)
    assert (out.returncode, out.stdout.split()[0]) == (0, "authentic"), out


def test_not_found_and_mismatch_exit_1(live: LiveChain) -> None:
    [doc] = live.issue()
    out = verify("--chain", live.url, *typed(doc, number="99999999"))
    assert out.returncode == 1 and out.stdout.startswith("not found"), out
    out = verify("--chain", live.url, *typed(doc, **{"check-code": "000000"}))
    assert out.returncode == 1 and out.stdout.startswith("mismatch"), out
    assert "check_code" in out.stdout
    out = verify("--chain", live.url, *typed(doc, date="2020-01-01"), "--json")
    assert out.returncode == 1
    assert json.loads(out.stdout)["mismatched"] == ["date"]


def test_already_claimed_exits_3(live: LiveChain) -> None:
    [doc] = live.issue()
    live.claim(doc)
    out = verify("--chain", live.url, *typed(doc))
    assert out.returncode == 3, out
    assert out.stdout.startswith("ALREADY CLAIMED") and "claimed:  yes" in out.stdout


def test_bad_questions_exit_2_without_asking(tmp_path: Path) -> None:
    nowhere = "http://127.0.0.1:9"  # never contacted: the question fails first
    doc = ["--code", "044031900111", "--number", "00000001", "--date", "2026-01-01"]
    for args, words in [
        (["--payload", "nonsense"], ["--payload", "taxctl:v1?"]),
        (["--payload", "taxctl:v1?c=1&n=2&d=3&k=4"], ["12 digits"]),
        (["--code", "12"], ["--number"]),
        ([*doc], ["check code"]),
        ([*doc, "--check-code", "12345"], ["last 6"]),
        ([*doc, "--total", "1.234"], ["--total"]),
        (["--payload", "taxctl:v1?c=1", "--code", "044031900111"], ["not both"]),
    ]:
        out = verify("--chain", nowhere, *args)
        assert out.returncode == 2, (args, out)
        one_line_error(out, *words)
    out = verify("--chain", "not-a-url", *doc, "--check-code", "123456")
    assert out.returncode == 2
    one_line_error(out, "--chain")


def test_unreachable_chain_is_one_clear_line(live: LiveChain) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # free once closed: nothing listens there
    [doc] = live.issue()
    out = verify("--chain", f"http://127.0.0.1:{port}", *typed(doc))
    assert out.returncode == 4, out
    one_line_error(out, "cannot reach the chain", str(port))


def test_a_4xx_is_one_clear_line(live: LiveChain) -> None:
    [doc] = live.issue()
    out = verify("--chain", f"{live.url}/elsewhere", *typed(doc))
    assert out.returncode == 4, out
    one_line_error(out, "refused", "404 not_found")


def test_help_documents_the_exit_codes() -> None:
    out = run_taxctl("verify", "--help", check=True)
    for line in ("0  authentic", "1  not authentic", "2  the question", "3  authentic, but"):
        assert line in out.stdout, out.stdout
    assert "4  no answer" in out.stdout
    assert "5  not yet uploaded" in out.stdout and "(forged)" in out.stdout


def test_offline_verification_exit_codes(live: LiveChain) -> None:
    """Before upload a signed QR is `not yet uploaded` (exit 5) with the deadline; tampered,
    `forged` (exit 1); after upload, `authentic` (exit 0)."""
    payload = live.issue_offline()
    out = verify("--chain", live.url, "--payload", payload)
    assert out.returncode == 5, out
    assert out.stdout.startswith("not yet uploaded") and "upload by:" in out.stdout, out.stdout
    assert live.device.device_id in out.stdout
    out = verify("--chain", live.url, "--payload", payload, "--json")
    answer = json.loads(out.stdout)
    assert (out.returncode, answer["result"]) == (5, "not_yet_uploaded")
    query = qr.parse(payload)
    assert query.total is not None
    tampered = replace(query, total=query.total + 100).to_payload()
    out = verify("--chain", live.url, "--payload", tampered)
    assert out.returncode == 1 and out.stdout.startswith("FORGED"), out
    live.upload()
    out = verify("--chain", live.url, "--payload", payload)
    assert out.returncode == 0 and out.stdout.startswith("authentic"), out


def test_rate_limited_is_no_answer(tmp_path: Path) -> None:
    chain = LiveChain(tmp_path, verify_per_minute=1)  # a burst of 2, then one a minute
    try:
        [doc] = chain.issue()
        # Misses spend the questions; then even the right one is refused.
        guess = typed(doc, **{"check-code": f"{(int(str(doc.check_code)[-6:]) + 1) % 10**6:06d}"})
        assert [verify("--chain", chain.url, *guess).returncode for _ in range(2)] == [1, 1]
        out = verify("--chain", chain.url, *typed(doc))
        assert out.returncode == 4, out
        one_line_error(out, "429 rate_limited", "ask again in")
    finally:
        chain.stop()


class _Rogue:
    """An HTTP server on loopback that answers every request with one fixed answer."""

    def __init__(self, status: int, body: bytes) -> None:
        import http.server
        import threading

        answer = (status, body)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(answer[0])
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer[1])))
                self.end_headers()
                self.wfile.write(answer[1])

            def log_message(self, *_: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


PAYLOAD = "taxctl:v1?c=044031900111&n=00000001&d=2026-01-01&t=100&k=123456"
ESC = "\x1b[2K\rauthentic"  # erase the line and write another over it
ROGUE_ANSWERS = [
    ("nested 100,000 deep", 200, b'{"result": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    ("a total of Infinity", 200, b'{"result": "authentic", "total": Infinity}'),
    ("a total that is text", 200, b'{"result": "authentic", "total": "lots"}'),
    ("a seller that is a list", 200, b'{"result": "authentic", "seller": [1, 2]}'),
    ("mismatched not a list", 200, b'{"result": "mismatch", "mismatched": 5}'),
    ("a refusal nested deep", 400, b'{"error": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    (
        "a refusal with a long escaping message",
        400,
        json.dumps({"error": {"code": "x", "message": ESC * 10_000}}).encode(),
    ),
    ("64 MB of answer", 200, b'{"result": "' + b"a" * (64 << 20) + b'"}'),
]


@pytest.mark.parametrize(
    ("what", "status", "body"), ROGUE_ANSWERS, ids=[a[0] for a in ROGUE_ANSWERS]
)
def test_a_rogue_chain_gets_one_short_line_never_a_traceback(
    what: str, status: int, body: bytes
) -> None:
    """`taxctl verify` read a chain's answer whole with json.loads and printed its fields
    as they came: deep nesting (RecursionError), Infinity or text as the total, a seller
    that is not a map were tracebacks; a refusal's message was printed whole, terminal
    escapes included. Whatever a URL answers, verify says so in one bounded line."""
    rogue = _Rogue(status, body)
    try:
        out = verify("--chain", rogue.url, "--payload", PAYLOAD)
    finally:
        rogue.close()
    assert out.returncode == 4, (what, out.returncode, out.stderr[-300:])
    one_line_error(out)
    assert len(out.stderr) < 400 and "\x1b" not in out.stderr, (what, out.stderr[:300])


def test_a_rogue_chains_names_are_printed_escaped() -> None:
    body = {"result": "authentic", "seller": {"name": ESC, "tax_id": "1" * 5000}, "total": 100}
    rogue = _Rogue(200, json.dumps(body).encode())
    try:
        out = verify("--chain", rogue.url, "--payload", PAYLOAD)
    finally:
        rogue.close()
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout and len(out.stdout) < 2000, out.stdout[:300]
