"""syncd's pieces in this event loop: a printer on a pty, syncd's link to it, the POS API
over that link; and a host-side port that rewrites what the printer answers.

For tests of one behaviour of syncd without processes (tests/shop.py runs the real ones).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from device.app import open_device
from device.client import DeviceClient
from device.firmware import Firmware
from device.protocol.clock import ManualClock
from device.protocol.framing import Frame, FrameDecoder, encode_frame
from device.server import DeviceServer
from device.transport import Port, create_pty, open_serial
from syncd.api import ApiContext, PosApi
from syncd.attachment import Attachment
from syncd.config import DeviceConfig
from syncd.idempotency import IdempotencyStore
from syncd.link import DeviceLink, LinkSettings
from syncd.metrics import SyncdMetrics
from tests.device.conftest import wide_limits

Rewrite = Callable[[Frame], Frame]


class RewritingPort:
    """A host-side port that passes every frame the printer sends through `rewrite` and
    frames it again with a correct CRC: the line delivered it intact, the printer said
    something odd. Damaged frames are dropped (the line's job, not these tests')."""

    def __init__(self, inner: Port, rewrite: Rewrite) -> None:
        self.inner = inner
        self.name = inner.name
        self.rewrite = rewrite
        self.decoder = FrameDecoder()

    async def read(self) -> bytes:
        while True:
            data = await self.inner.read()
            if not data:
                return b""
            out = [
                encode_frame(self.rewrite(event))
                for event in self.decoder.feed(data)
                if isinstance(event, Frame)
            ]
            if out:
                return b"".join(out)

    def write(self, data: bytes) -> None:
        self.inner.write(data)

    def close(self) -> None:
        self.inner.close()


def rewriting_opener(rewrite: Rewrite) -> Callable[..., Any]:
    """A DeviceLink opener whose client reads the printer through a RewritingPort."""

    async def opener(port: str, **options: Any) -> DeviceClient:
        return DeviceClient(
            RewritingPort(open_serial(port), rewrite),
            response_timeout=options["response_timeout"],
            max_retries=options["max_retries"],
            on_link_error=options.get("on_link_error"),
        )

    return opener


@asynccontextmanager
async def printer_link(
    tmp_path: Path,
    settings: LinkSettings,
    *,
    opener: Callable[..., Any] | None = None,
    metrics: SyncdMetrics | None = None,
) -> AsyncIterator[tuple[Firmware, DeviceLink]]:
    """A training printer served on a pty in this loop, and a running link to it."""
    fw = open_device(tmp_path / "device", training=True, clock=ManualClock(), limits=wide_limits())
    device_port = create_pty(tmp_path / "tty")
    device_stop = asyncio.Event()
    device_task = asyncio.create_task(DeviceServer(fw, device_port).serve(device_stop))
    config = DeviceConfig(port=str(tmp_path / "tty"), name="till-1")
    link = DeviceLink(config, settings, metrics, opener=opener or DeviceClient.open)
    link_stop = asyncio.Event()
    link_task = asyncio.create_task(link.run(link_stop))
    try:
        yield fw, link
    finally:
        link_stop.set()
        await asyncio.wait_for(link_task, 10)
        await link.close()
        device_stop.set()
        await asyncio.wait_for(device_task, 10)
        device_port.close()
        fw.close()


async def post_json(
    http: TestClient[Any, Any], route: str, body: Any, key: str | None = None
) -> tuple[int, dict[str, Any]]:
    """One POS request through aiohttp's TestClient: (status, JSON answer)."""
    headers = {"Idempotency-Key": key} if key is not None else {}
    resp = await http.post(route, json=body, headers=headers)
    return resp.status, await resp.json()


@dataclass
class Till:
    fw: Firmware
    link: DeviceLink
    http: TestClient[Any, Any]


@asynccontextmanager
async def pos_till(
    tmp_path: Path, settings: LinkSettings, *, opener: Callable[..., Any] | None = None
) -> AsyncIterator[Till]:
    """A printer and its link as above, with the POS API served over the link."""
    async with printer_link(tmp_path, settings, opener=opener) as (fw, link):
        store = IdempotencyStore(tmp_path / "syncd")
        ctx = ApiContext(
            devices=[Attachment(link)], store=store, metrics=SyncdMetrics(), status=dict
        )
        http = TestClient(TestServer(PosApi(ctx).app()))
        await http.start_server()
        try:
            assert await link.wait_online(10)
            yield Till(fw, link, http)
        finally:
            await http.close()
            store.close()
