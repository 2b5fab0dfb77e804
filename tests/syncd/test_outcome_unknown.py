"""A device answer that arrives intact but cannot be read keeps the POS request's key.

The printer issued the invoice; only its answer was spoiled on the way (a valid CRC
over a body that does not decode). The till is told "outcome unknown", and its retry
with the same Idempotency-Key gets that one invoice — the journal holds one document.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from device.app import open_device
from device.client import DeviceClient
from device.firmware import Firmware
from device.protocol.clock import ManualClock
from device.protocol.commands import Command
from device.protocol.framing import Frame, FrameDecoder, FrameType, encode_frame
from device.server import DeviceServer
from device.transport import Port, create_pty, open_serial
from syncd.api import ApiContext, PosApi
from syncd.config import DeviceConfig
from syncd.idempotency import IdempotencyStore
from syncd.link import DeviceLink, LinkSettings
from syncd.metrics import SyncdMetrics
from tests.device.conftest import INVOICE, wide_limits


class SpoilFirstIssueAnswer:
    """A host-side port that rewrites the body of the first ISSUE response it reads into
    bytes that are not CBOR, and frames it again with a correct CRC."""

    spoiled = 0

    def __init__(self, inner: Port) -> None:
        self.inner = inner
        self.name = inner.name
        self.decoder = FrameDecoder()

    async def read(self) -> bytes:
        while True:
            data = await self.inner.read()
            if not data:
                return b""
            out = []
            for event in self.decoder.feed(data):
                if not isinstance(event, Frame):
                    continue
                if (
                    event.type == FrameType.RESPONSE
                    and event.command == Command.ISSUE
                    and not SpoilFirstIssueAnswer.spoiled
                ):
                    SpoilFirstIssueAnswer.spoiled += 1
                    event = Frame(
                        event.type, event.request_id, event.command, event.status, b"\xff\x00"
                    )
                out.append(encode_frame(event))
            if out:
                return b"".join(out)

    def write(self, data: bytes) -> None:
        self.inner.write(data)

    def close(self) -> None:
        self.inner.close()


async def spoiling_opener(port: str, **options: Any) -> DeviceClient:
    return DeviceClient(
        SpoilFirstIssueAnswer(open_serial(port)),
        response_timeout=options["response_timeout"],
        max_retries=options["max_retries"],
    )


@dataclass
class Till:
    fw: Firmware
    link: DeviceLink
    http: TestClient[Any, Any]


@pytest.fixture
async def till(tmp_path: Path) -> AsyncIterator[Till]:
    SpoilFirstIssueAnswer.spoiled = 0
    fw = open_device(tmp_path / "device", training=True, clock=ManualClock(), limits=wide_limits())
    device_port = create_pty(tmp_path / "tty")
    device_stop = asyncio.Event()
    device_task = asyncio.create_task(DeviceServer(fw, device_port).serve(device_stop))
    link = DeviceLink(
        DeviceConfig(port=str(tmp_path / "tty"), name="till-1"),
        LinkSettings(response_timeout=0.2, status_interval=0.2, reopen_max=0.1),
        opener=spoiling_opener,
    )
    link_stop = asyncio.Event()
    link_task = asyncio.create_task(link.run(link_stop))
    store = IdempotencyStore(tmp_path / "syncd")
    ctx = ApiContext(
        links=[link], store=store, metrics=SyncdMetrics(), status=dict, wake=lambda _link: None
    )
    http = TestClient(TestServer(PosApi(ctx).app()))
    await http.start_server()
    try:
        assert await link.wait_online(10)
        yield Till(fw, link, http)
    finally:
        await http.close()
        link_stop.set()
        await asyncio.wait_for(link_task, 10)
        await link.close()
        store.close()
        device_stop.set()
        await asyncio.wait_for(device_task, 10)
        device_port.close()
        fw.close()


async def post_invoice(till: Till, key: str) -> tuple[int, dict[str, Any]]:
    """POST until the link is back (a spoiled answer makes syncd check the link)."""
    for _ in range(100):
        resp = await till.http.post("/v1/invoices", json=INVOICE, headers={"Idempotency-Key": key})
        body = await resp.json()
        if body.get("error") != "DEVICE_OFFLINE":
            return resp.status, body
        await asyncio.sleep(0.1)
    raise AssertionError("the link did not come back")


async def test_an_unreadable_answer_keeps_the_key_and_the_retry_gets_the_one_invoice(
    till: Till,
) -> None:
    status, first = await post_invoice(till, "sale-1")
    assert SpoilFirstIssueAnswer.spoiled == 1
    assert (status, first["error"]) == (503, "OUTCOME_UNKNOWN"), first
    assert first["idempotency_key"] == "sale-1"
    status, again = await post_invoice(till, "sale-1")
    assert status == 200 and again["retry"] is True, again
    assert again["counter"] == 1
    assert till.fw.journal.count() == 1  # the printer issued one invoice, never a second
