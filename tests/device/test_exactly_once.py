"""Exactly-once issuance over a lossy link, and across a device restart."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from device.protocol import codec
from device.protocol.commands import Command
from device.protocol.framing import Frame, FrameDecoder, FrameType, encode_frame
from device.protocol.status import DeviceError, Status
from device.transport import Port
from tests.device.conftest import INVOICE, Harness, wide_limits
from tests.helpers import check_journal


class DropEveryOtherResponse:
    """A host-side port that loses every second response frame on its way in."""

    def __init__(self, inner: Port) -> None:
        self.inner = inner
        self.name = inner.name
        self.decoder = FrameDecoder()
        self.seen = 0
        self.dropped = 0

    async def read(self) -> bytes:
        while True:
            data = await self.inner.read()
            if not data:
                return b""
            kept = []
            for event in self.decoder.feed(data):
                if isinstance(event, Frame):
                    if event.type == FrameType.RESPONSE:
                        self.seen += 1
                        if self.seen % 2 == 0:
                            self.dropped += 1
                            continue
                    kept.append(encode_frame(event))
            if kept:
                return b"".join(kept)

    def write(self, data: bytes) -> None:
        self.inner.write(data)

    def close(self) -> None:
        self.inner.close()


async def test_lossy_link_gives_gapless_counters_and_no_duplicates(start: Any) -> None:
    lossy: list[DropEveryOtherResponse] = []

    def wrap(port: Port) -> Port:
        lossy.append(DropEveryOtherResponse(port))
        return lossy[0]

    h: Harness = await start(
        limits=wide_limits(), response_timeout=0.05, max_retries=20, wrap_port=wrap
    )
    results = await asyncio.gather(*(h.client.issue(INVOICE) for _ in range(60)))
    counters = sorted(r["counter"] for r in results)
    assert counters == list(range(1, 61))  # one invoice per request, no gaps
    assert len({r["number"] for r in results}) == 60
    assert h.fw.journal.count() == 60
    assert lossy[0].dropped >= 30
    assert h.client.stats.retransmissions >= 30
    assert h.fw.since_start.replays >= 30
    docs = [doc for _, doc in h.fw.journal.documents(1, max_count=1000, max_bytes=10**9)]
    check_journal(docs, h.fw.key.public_key)


async def test_same_id_same_request_same_bytes_different_request_refused(start: Any) -> None:
    h: Harness = await start(limits=wide_limits())
    rid = h.client.new_request_id()
    first = await h.client.issue(INVOICE, request_id=rid)
    again = await h.client.issue(INVOICE, request_id=rid)
    assert again == first
    assert h.fw.journal.count() == 1
    with pytest.raises(DeviceError) as err:
        await h.client.issue({"items": INVOICE["items"][:1]}, request_id=rid)
    assert err.value.status == Status.REQUEST_ID_REUSED
    with pytest.raises(DeviceError) as err:
        await h.client.request(Command.X_REPORT, request_id=rid)
    assert err.value.status == Status.REQUEST_ID_REUSED
    assert h.fw.journal.count() == 1


async def test_retransmission_after_restart_returns_the_same_response(
    start: Any, tmp_path: Any
) -> None:
    h: Harness = await start(limits=wide_limits())
    rid = h.client.new_request_id()
    body = codec.encode(INVOICE)
    wire = encode_frame(Frame(FrameType.REQUEST, rid, Command.ISSUE, 0, body))
    h.client.port.write(wire)
    first = await h.client.issue(INVOICE, request_id=rid)  # shares the answer
    await h.client.issue(INVOICE)
    await h.close()
    # Power cycle: a new process would see only what is in the journal.
    h2: Harness = await start(state=h.state, link=tmp_path / "tty2", clock=h.clock)
    assert h2.fw.maybe_issued(rid)
    replay = await h2.client.issue(INVOICE, request_id=rid)
    assert replay == first
    assert h2.fw.journal.count() == 2
    assert h2.fw.since_start.replays == 1
    with pytest.raises(DeviceError) as err:
        await h2.client.issue({"items": INVOICE["items"][:1]}, request_id=rid)
    assert err.value.status == Status.REQUEST_ID_REUSED
    fresh = await h2.client.issue(INVOICE)
    assert fresh["counter"] == 3


async def test_every_document_kind_verifies_with_pycose(start: Any) -> None:
    from device.protocol.document import parse_document
    from tests.helpers import pycose_verify

    h: Harness = await start(limits=wide_limits())
    inv = await h.client.issue(INVOICE)
    await h.client.issue({"items": [dict(INVOICE["items"][0], quantity="0.333")]})
    await h.client.credit(
        {"refers_to": {"code": inv["code"], "number": inv["number"]}, "reason": "returned"}
    )
    await h.client.x_report()
    z = await h.client.z_report()
    assert z["kind"] == "z_report"
    after_z = await h.client.x_report()
    docs = [doc for _, doc in h.fw.journal.documents(1, max_count=100, max_bytes=10**9)]
    check_journal(docs, h.fw.key.public_key)
    kinds = [pycose_verify(d, h.fw.key.public_key)["kind"] for d in docs]
    assert kinds == ["invoice", "invoice", "credit", "x_report", "z_report", "x_report"]
    for raw in docs:
        parse_document(raw)  # deterministic encoding, shape
    z_payload = pycose_verify(docs[4], h.fw.key.public_key)
    assert z_payload["report"]["documents"] == 4
    assert z_payload["report"]["invoices"] == 2 and z_payload["report"]["credits"] == 1
    # The day's net total: two invoices less the credit note.
    assert z_payload["total"] == sum(
        pycose_verify(d, h.fw.key.public_key)["total"] for d in docs[:3]
    )
    x_after = pycose_verify(after_z["document"], h.fw.key.public_key)
    assert x_after["report"]["documents"] == 0 and x_after["report"]["z_number"] == 2
