"""Hostile requests on a real link: each is refused with its own status, briefly, changing
nothing, and the device goes on serving."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from pathlib import Path
from typing import Any

import cbor2
import pytest

from device import receipts, server
from device.client import DeviceClient
from device.protocol import framing, trust
from device.protocol.commands import Command
from device.protocol.framing import Frame, FrameDecoder, FrameType, encode_frame
from device.protocol.keys import KeyPair
from device.protocol.status import DeviceError, Status
from device.transport import open_serial
from tests.device.conftest import INVOICE, TEA, Harness, wide_limits
from tests.device.protocol.test_untrusted import sharing_bomb
from tests.device.test_sync import journal
from tests.helpers import SigningConsortium, export_documents, spawn

CONTROLS = "\x01\x1b\x7f" * 10_000  # 30,000 characters; repr() makes 120,000 of them


async def refused(h: Harness, status: Status, call: Any) -> DeviceError:
    """Refused with `status`, a reply that fits a frame with room to spare, nothing changed,
    and the device still answering."""
    before = h.snapshot()
    with pytest.raises(DeviceError) as err:
        await call
    assert err.value.status == status, err.value.text
    assert len(cbor2.dumps(err.value.to_body())) < 4096
    assert h.snapshot() == before, "a refusal changed the device"
    assert (await h.client.status())["counter"] == before["counter"]
    return err.value


@pytest.mark.parametrize(
    ("command", "body", "status"),
    [
        (Command.ISSUE, {"items": [dict(TEA, quantity=CONTROLS)]}, Status.BAD_QUANTITY),
        (Command.ISSUE, {"items": [TEA], CONTROLS: 1}, Status.INVALID_INVOICE),
        (Command.ISSUE, {"items": [dict(TEA, **{CONTROLS: 1})]}, Status.INVALID_INVOICE),
        (
            Command.ISSUE,
            {"buyer": {"name": "B", CONTROLS: 1}, "items": [TEA]},
            Status.INVALID_INVOICE,
        ),
        (
            Command.ISSUE,
            {"items": [TEA], **{f"{CONTROLS[:40]}{i:04d}": i for i in range(1000)}},
            Status.INVALID_INVOICE,
        ),
        (Command.SET_TIME, {"time": CONTROLS}, Status.BAD_REQUEST),
        (Command.STATUS, {CONTROLS: 1}, Status.BAD_REQUEST),
        (Command.HELLO, {"versions": [CONTROLS[:3000]] * 10}, Status.UNSUPPORTED_VERSION),
    ],
)
async def test_a_refusal_quoting_a_huge_value_stays_small(
    start: Any, command: Command, body: dict[str, Any], status: Status
) -> None:
    h: Harness = await start(limits=wide_limits())
    await h.client.issue(INVOICE)
    error = await refused(h, status, h.client.request(command, body))
    assert "\x01" not in error.detail and "\x1b" not in error.detail
    assert (await h.client.issue(INVOICE))["counter"] == 2


async def test_credit_with_a_huge_unknown_field(start: Any) -> None:
    h: Harness = await start(limits=wide_limits())
    original = await h.client.issue(INVOICE)
    ref = {"code": original["code"], "number": original["number"]}
    body = {"refers_to": ref, "reason": "returned", CONTROLS: 1}
    await refused(h, Status.INVALID_INVOICE, h.client.credit(body))
    assert (await h.client.credit({"refers_to": ref, "reason": "returned"}))["counter"] == 2


async def test_an_answer_too_large_for_a_frame_is_an_internal_error(
    start: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug that builds an oversized answer costs that one request, on the read path and
    on the write path; the device keeps serving."""
    h: Harness = await start(limits=wide_limits())
    await h.client.issue(INVOICE)
    huge = {"padding": b"\0" * (framing.MAX_BODY + 1)}
    monkeypatch.setitem(server.READS, Command.INFO, lambda fw, body: huge)
    monkeypatch.setattr(h.fw, "report", lambda kind, request: huge)
    await refused(h, Status.INTERNAL_ERROR, h.client.info())
    await refused(h, Status.INTERNAL_ERROR, h.client.x_report())
    monkeypatch.undo()
    assert (await h.client.issue(INVOICE))["counter"] == 2


@pytest.mark.parametrize("command", ["ACK_SYNC", "LOAD_CERT", "LOAD_SEGMENT", "SET_TIME"])
async def test_a_bug_in_any_write_refuses_that_request_only(
    start: Any, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    h: Harness = await start(limits=wide_limits())
    await h.client.issue(INVOICE)

    def bug(*_: Any) -> Any:
        raise RuntimeError("a bug\n" + CONTROLS)

    target: dict[str, tuple[Any, str]] = {
        "ACK_SYNC": (receipts, "verify_ack"),
        "LOAD_CERT": (h.fw.credentials, "check_certificate"),
        "LOAD_SEGMENT": (h.fw.credentials, "check_segment"),
        "SET_TIME": (h.fw, "set_time"),
    }
    monkeypatch.setattr(*target[command], bug)
    bodies = {
        "ACK_SYNC": {"receipts": [{}]},
        "LOAD_CERT": {"certificate": b"x"},
        "LOAD_SEGMENT": {"segment": b"x"},
        "SET_TIME": {"time": "2030-01-01T00:00:00Z"},
    }
    error = await refused(
        h, Status.INTERNAL_ERROR, h.client.request(Command[command], bodies[command])
    )
    assert (
        error.detail.startswith("RuntimeError: ") and len(error.detail) <= 401
    )  # PROTOCOL.md: 400 and an ellipsis
    assert (await h.client.issue(INVOICE))["counter"] == 2


@pytest.mark.parametrize("height", ["7", "x", [1], True, -1, None])
async def test_a_quorum_signed_receipt_with_a_bad_height(start: Any, height: Any) -> None:
    """A quorum signs bytes, not types: a header whose height is not a non-negative
    integer is refused after its valid signatures, and nothing is acknowledged."""
    h: Harness = await start(limits=wide_limits())
    chain = SigningConsortium()
    await h.client.issue(INVOICE)
    receipt = chain.receipts(journal(h), h.fw.settings.device_id)[0]
    header = dict(receipt["header"], height=height)
    receipt["header"] = header
    receipt["signatures"] = [
        {"node_id": f"node{i}", "signature": trust.sign_header(node, header)}
        for i, node in enumerate(chain.nodes)
    ]
    await refused(h, Status.RECEIPT_INVALID, h.client.ack_sync([receipt], consortium=chain.raw))
    assert h.fw.credentials.consortium is None  # the list offered with it was not stored either
    assert (await h.client.issue(INVOICE))["counter"] == 2


@pytest.mark.parametrize("counter", [True, 0, -1])
async def test_a_quorum_signed_receipt_with_a_bad_counter(start: Any, counter: Any) -> None:
    h: Harness = await start(limits=wide_limits())
    chain = SigningConsortium()
    await h.client.issue(INVOICE)
    receipt = dict(chain.receipts(journal(h), h.fw.settings.device_id)[0], counter=counter)
    await refused(h, Status.RECEIPT_INVALID, h.client.ack_sync([receipt], consortium=chain.raw))


async def test_a_certificate_whose_seller_name_is_not_a_printable_name(start: Any) -> None:
    bureau = KeyPair.generate()
    h: Harness = await start(training=False, bureau_key=bureau.public_key, limits=wide_limits())
    taxpayer = {"name": "Tea House", "tax_id": "91350100M000100Y43"}
    opened = trust.open_csr((await h.client.csr(taxpayer))["csr"])
    for name in ("Tea\u202eesuoH", 7):
        forged = dict(opened, taxpayer=dict(taxpayer, name=name))
        cert = trust.issue_certificate(bureau, forged, 1, 0, 1)
        await refused(h, Status.CERT_INVALID, h.client.load_cert(cert))
    assert h.fw.credentials.cert is None
    good = trust.issue_certificate(bureau, opened, 2, 0, 1)
    assert (await h.client.load_cert(good))["serial"] == 2


# --- raw frame bodies: what the client library would never send ----------------------------


async def exchange(link: str, requests: list[tuple[Command, bytes]]) -> list[Frame]:
    """Send raw bodies on `link` one after the other; the answers, each within 10 s."""
    port = open_serial(link)
    answers: list[Frame] = []
    decoder = FrameDecoder()
    try:
        for rid, (command, body) in enumerate(requests, start=1):
            port.write(encode_frame(Frame(FrameType.REQUEST, rid, int(command), 0, body)))
            while len(answers) < rid:
                data = await asyncio.wait_for(port.read(), 10)
                assert data, "the device closed the link"
                events = decoder.feed(data)
                answers += [
                    e for e in events if isinstance(e, Frame) and e.type == FrameType.RESPONSE
                ]
    finally:
        port.close()
    return answers


async def raw_requests(h: Harness, requests: list[tuple[Command, bytes]]) -> list[Frame]:
    """`exchange` on the harness's link instead of its client, then a fresh client."""
    await h.client.close()
    link = str(h.state.parent / "tty")
    try:
        return await exchange(link, requests)
    finally:
        h.client = DeviceClient(open_serial(link), response_timeout=1.0)


async def test_a_sharing_bomb_is_refused_at_once(tmp_path: Path) -> None:
    """In a device process: the bomb used to be expanded by the refusal that quoted it,
    freezing the printer until it ran out of memory."""
    link = tmp_path / "tty"
    proc = spawn(
        ["device", "run", "--state", str(tmp_path / "s"), "--link", str(link), "--training"]
    )
    try:
        client = DeviceClient(open_serial(str(link)))
        assert (await client.issue(INVOICE))["counter"] == 1
        await client.close()
        # A ~250-byte ISSUE whose quantity is one string shared through 30 doublings.
        item = {"name": "Tea", "unit_price": 1250, "tax_rate_bp": 1300, "quantity": 0}
        body = cbor2.dumps({"items": [item]})
        assert body.endswith(b"hquantity\x00")
        bomb = body[:-1] + sharing_bomb(30)  # the quantity (the last item) is the bomb
        assert len(bomb) < 300
        began = time.monotonic()
        answers = await exchange(str(link), [(Command.ISSUE, bomb), (Command.STATUS, b"")])
        assert time.monotonic() - began < 5
        assert [a.status for a in answers] == [Status.BAD_REQUEST, Status.OK]
        assert "tag 28" in cbor2.loads(answers[0].body)["detail"]
        status = cbor2.loads(answers[1].body)
        assert status["counter"] == 1 and status["since_start"]["documents"] == 1
        client = DeviceClient(open_serial(str(link)))
        assert (await client.issue(INVOICE))["counter"] == 2
        await client.close()
    finally:
        assert proc.stop() == 0
    assert [r["counter"] for r in export_documents(tmp_path / "s")] == [1, 2]


@pytest.mark.parametrize(
    "body",
    [
        {"items": [TEA], "buyer": {1: "x", "name": "B"}},
        {"items": [{**TEA, 2: 1}]},
        {"items": [TEA], b"k": 1},
    ],
)
async def test_map_keys_that_are_not_text(start: Any, body: dict[Any, Any]) -> None:
    h: Harness = await start(limits=wide_limits())
    before = h.snapshot()
    answers = await raw_requests(h, [(Command.ISSUE, cbor2.dumps(body)), (Command.STATUS, b"")])
    assert [a.status for a in answers] == [Status.BAD_REQUEST, Status.OK]
    assert h.snapshot() == before


class _Sink:
    """A port that takes every frame and keeps none (the host reads them)."""

    name = "sink"

    async def read(self) -> bytes:
        return b""

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


def test_recorded_answers_are_bounded_in_bytes_not_only_in_count(tmp_path: Path) -> None:
    """The server records each answer for a retransmission of its request id, 4096 of them:
    FETCH and EXPORT answers are up to 60 kB, so 4096 FETCHes of 25 bytes (or a day of
    syncd's own pages) kept 250 MB on the printer. The record is bounded in bytes too."""
    from device.app import open_device

    fw = open_device(tmp_path / "state", training=True)
    try:
        srv = server.DeviceServer(fw, _Sink())
        page = {"documents": [bytes(range(256)) * 234], "first": 1, "last_counter": 1}
        tracemalloc.start()
        try:
            for rid in range(1, 1001):
                srv._reply(rid, Command.FETCH, bytes(16), Status.OK, page)
            kept, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert kept < server.RECENT_BYTES + 2_000_000, f"{kept} bytes kept for 1000 answers"
        # the newest answers are still there for a retransmission
        assert 1000 in srv._recent and 1 not in srv._recent
    finally:
        fw.close()
