"""Fuzz campaigns: hypothesis drives each target for a number of inputs.

Used by tests/fuzz/test_fuzz.py (a short, derandomized run in CI) and by
bench/fuzz.py (random runs for as many minutes as asked). Only the generate
phase runs: with real processes behind the target, a failure is reported
with the input that caused it rather than shrunk against changed state.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from device.protocol.commands import Command
from device.protocol.framing import Frame, FrameType, encode_content, encode_frame
from syncd.chain_client import ChainClient
from tests.fuzz import strategies as fz
from tests.fuzz.targets import (
    CALLS,
    VALID_BODIES,
    Answer,
    FakeChain,
    Figures,
    HttpInput,
    HttpTarget,
    PrinterTarget,
    chain_state,
    feed_answer,
    now_utc,
    pos_counter,
)
from tests.helpers import check_journal, export_documents
from tests.shop import Shop


def _settings(examples: int, derandomize: bool) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=derandomize,
        database=None,
        phases=(Phase.generate,),
        suppress_health_check=list(HealthCheck),
    )


# --- the printer -------------------------------------------------------------------------------

COMMANDS = [*Command, 0x00, 0x7F, 0xFF]


def printer(target: PrinterTarget, examples: int, derandomize: bool = True) -> Figures:
    @_settings(examples, derandomize)
    @given(st.data())
    def run(data: st.DataObject) -> None:
        kind = data.draw(st.sampled_from(("body", "body", "body", "frame", "bytes")))
        command = data.draw(st.sampled_from(COMMANDS))
        valid = VALID_BODIES.get(command, {})  # type: ignore[call-overload]
        if command == Command.SET_TIME:
            valid = {"time": now_utc()}
        if kind == "body":
            target.feed_request(int(command), data.draw(fz.cbor_bodies(valid)))
        elif kind == "frame":
            target.feed_bytes(data.draw(_damaged_frames(int(command), fz.dumps(valid))))
        else:
            target.feed_bytes(data.draw(st.binary(max_size=300)))

    run()
    return target.figures


@st.composite
def _damaged_frames(draw: st.DrawFn, command: int, body: bytes) -> bytes:
    """A frame with one field or byte wrong, CRC right or wrong."""
    frame = Frame(FrameType.REQUEST, draw(st.integers(0, 2**64 - 1)), command, 0, body)
    content = bytearray(encode_content(frame))
    how = draw(st.sampled_from(("flip", "type", "version", "length", "escape", "cut")))
    if how == "flip" and content:
        index = draw(st.integers(0, len(content) - 1))
        content[index] ^= draw(st.integers(1, 255))
    elif how in ("type", "version"):
        # Another value than the frame's own: the same one would make a valid request,
        # which feed_bytes (whatever the answer) must not be given.
        index = 1 if how == "type" else 0
        content[index] = draw(st.integers(0, 255).filter(lambda v: v != content[index]))
    elif how == "length":
        wrong = st.integers(0, 65535).filter(lambda n: n != len(body))
        content[12:14] = draw(wrong).to_bytes(2, "big")
    elif how == "escape":
        return b"\x7e" + bytes(content[:5]) + b"\x7d" + draw(st.binary(min_size=1, max_size=2))
    elif how == "cut":
        # Short of its last content byte: feed_bytes closes what it sends with a flag, so
        # a cut after the content would be the whole (valid) frame again.
        wire = encode_frame(frame)
        return wire[: draw(st.integers(1, min(30, len(wire) - 2)))]
    return b"\x7e" + bytes(content).replace(b"\x7d", b"\x7d\x5d").replace(b"\x7e", b"\x7d\x5e")


# --- HTTP: the POS API and the chain API -------------------------------------------------------

PATH_SEGMENTS = ("1", "%C2%B2", "-1", "9" * 30, "%00", "%ff", "..", "x" * 300)
CONTENT_TYPES = ("application/json", "application/cbor", "text/plain", "", "application/x-evil")


@st.composite
def _http_inputs(draw: st.DrawFn, routes: list[tuple[str, str, dict[str, Any]]]) -> HttpInput:
    method, path, valid = draw(st.sampled_from(routes))
    if draw(st.booleans()):
        segment = draw(
            st.sampled_from(("1", "%C2%B2", "-1", "9" * 30, "%00", "%ff", "..", "x" * 300))
        )
        path = path.replace("{p}", segment)
    else:
        path = path.replace("{p}", "1")
    if draw(st.booleans()):
        query = draw(
            st.sampled_from(
                (
                    "device=",
                    "paper=99",
                    "wait=1e308",
                    "wait=nan",
                    "device=%00",
                    "q=" + "A" * 3000,
                    "receipts=x",
                    "k=1&k=2",
                )
            )
        )
        path += ("&" if "?" in path else "?") + query
    kind = draw(st.sampled_from(CONTENT_TYPES))
    if kind == "application/cbor":
        body = draw(fz.cbor_bodies(valid))
    else:
        body = draw(
            st.one_of(
                fz.mutated(valid, fz.JSON_VALUES).map(_json),
                fz.JSON_VALUES.map(_json),
                st.sampled_from(_JSON_NASTIES),
                st.binary(max_size=100),
            )
        )
    headers = {"Content-Type": kind} if kind else {}
    if draw(st.booleans()):
        headers["Idempotency-Key"] = draw(st.text(max_size=80))
    if method == "GET" and draw(st.booleans()):
        body = b""
    return HttpInput(method, path, headers, body)


def _json(value: Any) -> bytes:
    text = json.dumps(value, ensure_ascii=False, default=_bytes_as_base64)
    return text.encode("utf-8", "surrogatepass")


def _bytes_as_base64(value: Any) -> str:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(type(value).__name__)


_JSON_NASTIES = (
    b"[" * 100_000 + b"]" * 100_000,
    b'{"items": NaN}',
    b'{"buyer": {"name": "\\ud800"}}',
    b'{"items": [{"quantity": ' + b"9" * 5000 + b"}]}",
    b"\xff\xfe",
    b"",
    b"null",
)


def http_target(
    target: HttpTarget,
    routes: list[tuple[str, str, dict[str, Any]]],
    state: Any,
    examples: int,
    derandomize: bool = True,
) -> Figures:
    """Feed requests; `state(target)` must change only after a 2xx to a write."""

    @_settings(examples, derandomize)
    @given(_http_inputs(routes), st.booleans(), st.binary(max_size=300))
    def run(item: HttpInput, raw: bool, junk: bytes) -> None:
        before = state(target)
        if raw and junk:
            target.feed_raw(junk)
            status = None
        else:
            status = target.feed(item)
        after = state(target)
        if status is None or not 200 <= status < 300 or item.method == "GET":
            assert after == before, f"{target.figures.target}: state moved on {item.path[:80]}"
        elif after != before:
            target.figures.accepted += 1

    run()
    return target.figures


POS_ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/v1/invoices", VALID_BODIES[Command.ISSUE]),
    ("POST", "/v1/credit-notes", VALID_BODIES[Command.CREDIT]),
    ("POST", "/v1/reports/x", {}),
    ("GET", "/v1/documents/{p}", {}),
    ("GET", "/v1/invoices/{p}/{p}", {}),
    ("GET", "/v1/status", {}),
    ("GET", "/metrics", {}),
    ("PUT", "/v1/invoices", {}),
]

CHAIN_ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/v1/documents?wait=0.1", {"documents": [b"\xd2\x84\x43\xa1\x01\x27"]}),
    ("POST", "/v1/devices", {"csr": b"\xd2\x84", "segments": []}),
    ("POST", "/v1/devices/{p}/segments", {"count": 10}),
    ("POST", "/v1/devices/{p}/revoke", {"reason": "x"}),
    ("POST", "/v1/buyers", {"tax_id": "91350100M000100Y43", "name": "B"}),
    ("POST", "/v1/invoices/{p}/{p}/claim", {"buyer": "91350100M000100Y43"}),
    ("POST", "/v1/verify", {"code": "011002600111", "number": "00000001", "k": "123456"}),
    ("GET", "/v1/verify?q={p}", {}),
    ("GET", "/v1/devices/{p}", {}),
    ("GET", "/v1/devices/{p}/documents", {}),
    ("GET", "/v1/tx/{p}", {}),
    ("GET", "/v1/blocks/{p}", {}),
    ("GET", "/v1/invoices/{p}/{p}", {}),
    ("GET", "/v1/consortium", {}),
    ("GET", "/verify?q={p}", {}),
]


def pos(target: HttpTarget, examples: int, derandomize: bool = True) -> Figures:
    return http_target(target, POS_ROUTES, pos_counter, examples, derandomize)


def chain(target: HttpTarget, examples: int, derandomize: bool = True) -> Figures:
    return http_target(target, CHAIN_ROUTES, chain_state, examples, derandomize)


# --- chain answers fed to syncd's chain client -------------------------------------------------

_SUBMITTED = {"status": "committed", "receipt": {"height": 1, "doc_hash": b"h", "position": 0}}
ANSWER_SHAPES: dict[str, dict[str, Any]] = {
    "submit": {
        "results": [_SUBMITTED, _SUBMITTED],
        "blocks": [{"header": {"height": 1}, "signatures": []}],
    },
    "consortium": {"consortium": b"\xd2\x84"},
    "register": {"certificate": b"\xd2\x84", "device_id": "TCFUZZ", "segments": []},
    "allocate_segment": {"segment": b"\xd2\x84"},
    "health": {
        "status": "ok",
        "chain_id": "fuzz",
        "training": True,
        "height": 1,
        "nodes": 4,
        "reachable": 4,
        "quorum": 3,
        "finalizing": True,
        "mempool": 0,
        "held": 0,
    },
}
ERROR_SHAPE: dict[str, Any] = {"error": {"code": "BAD_REQUEST", "message": "no"}}
STATUSES = (200, 200, 200, 200, 200, 200, 201, 400, 404, 409, 500, 503, 302, 204)
ANSWER_TYPES = ("application/cbor",) * 4 + ("application/json", "text/html", "")


@st.composite
def _answers(draw: st.DrawFn, call: str) -> Answer:
    """Mostly what the client asked for (a CBOR answer of the call's shape), broken."""
    status = draw(st.sampled_from(STATUSES))
    kind = draw(st.sampled_from(ANSWER_TYPES))
    valid = ANSWER_SHAPES[call] if status < 400 else ERROR_SHAPE
    values = st.one_of(fz.NASTY_TEXT, fz.CBOR_VALUES)
    if kind == "application/json":
        body = draw(
            st.one_of(fz.mutated(valid, fz.JSON_VALUES).map(_json), st.sampled_from(_JSON_NASTIES))
        )
    else:
        body = draw(
            st.one_of(
                st.just(fz.dumps(valid)),
                fz.mutated(valid, values).map(fz.dumps),
                fz.cbor_bodies(valid),
            )
        )
    return Answer(status, kind, body)


def chain_answers(
    examples: int, derandomize: bool = True, figures: Figures | None = None
) -> Figures:
    figures = figures or Figures("chain answers to syncd")

    async def session(items: list[tuple[Answer, str]]) -> None:
        fake = FakeChain()
        await fake.start()
        client = ChainClient([fake.url], timeout=5.0)
        try:
            for item, call in items:
                await feed_answer(client, fake, figures, item, call)
        finally:
            await client.close()
            await fake.stop()

    @_settings(examples, derandomize)
    @given(st.data())
    def run(data: st.DataObject) -> None:
        call = data.draw(st.sampled_from(CALLS))
        asyncio.run(session([(data.draw(_answers(call)), call)]))

    run()
    return figures


# --- sessions: a target's processes, its campaign, and the checks at its end -------------------

Feed = Callable[[int, bool], Figures]


@contextmanager
def _printer_session(root: Path) -> Iterator[Feed]:
    shop = Shop(root)
    target = PrinterTarget(shop)
    try:
        yield lambda examples, derandomize: printer(target, examples, derandomize)
        public_key = target.public_key()
        target.close()
        assert shop.devices["fuzzed"].stop() == 0, "printer: did not stop cleanly"
        journal = export_documents(root / "fuzzed")
        assert len(journal) == target.state["counter"], "printer: journal and counter differ"
        check_journal([row["raw"] for row in journal], public_key)
    finally:
        target.close()
        shop.stop_all()


@contextmanager
def _chain_session(root: Path) -> Iterator[Feed]:
    shop = Shop(root)
    try:
        proc = shop.start_chain()
        target = HttpTarget("chain api", shop.chain_url, proc.proc.pid, "/v1/health", frozenset())
        yield lambda examples, derandomize: chain(target, examples, derandomize)
        assert proc.proc.poll() is None, "chain: exited"
    finally:
        shop.stop_all()


@contextmanager
def _pos_session(root: Path) -> Iterator[Feed]:
    shop = Shop(root)
    try:
        shop.start_chain()
        shop.start_device()
        proc = shop.start_syncd()
        # 503 is the POS API's documented "printer or service not available now, retry".
        target = HttpTarget("pos api", shop.api, proc.proc.pid, "/v1/health", frozenset({503}))
        yield lambda examples, derandomize: pos(target, examples, derandomize)
        assert proc.proc.poll() is None, "syncd: exited"
        shop.assert_exactly_once_after_sync()
    finally:
        shop.stop_all()


@contextmanager
def _answers_session(root: Path) -> Iterator[Feed]:
    figures = Figures("chain answers to syncd")
    yield lambda examples, derandomize: chain_answers(examples, derandomize, figures)


SESSIONS: dict[str, Callable[[Path], AbstractContextManager[Feed]]] = {
    "printer": _printer_session,
    "chain": _chain_session,
    "pos": _pos_session,
    "answers": _answers_session,
}


def run(
    name: str, root: Path, *, examples: int, seconds: float = 0.0, derandomize: bool = True
) -> Figures:
    """One round of `examples` inputs, then fresh random rounds until `seconds` have passed."""
    end = time.monotonic() + seconds
    with SESSIONS[name](root) as feed:
        figures = feed(examples, derandomize)
        while time.monotonic() < end:
            figures = feed(examples, False)
    return figures
