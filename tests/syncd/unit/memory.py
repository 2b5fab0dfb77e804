"""In-memory stand-ins for syncd's unit tests: a chain port, a serial port pair, a printer.

`MemoryChain` is a `ChainGateway` that keeps every document once and answers with
receipts a real printer accepts (signed by `tests.helpers.SigningConsortium`).
`memory_printer` serves a training printer on one end of device/'s `loop://`
pair in this event loop and runs a `DeviceLink` to it on the other.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device.app import open_device
from device.client import DeviceClient
from device.firmware import Firmware
from device.loopback import memory_pair
from device.protocol.clock import ManualClock
from device.protocol.document import parse_document
from device.server import DeviceServer
from syncd.chainport import (
    ChainRefused,
    ConsortiumOffer,
    Registration,
    SubmitResult,
    SubmitStatus,
)
from syncd.config import DeviceConfig
from syncd.link import DeviceLink, LinkSettings
from syncd.metrics import SyncdMetrics
from tests.device.conftest import wide_limits
from tests.helpers import SigningConsortium

FAST_LINK = LinkSettings(response_timeout=0.2, max_retries=2, reopen_max=0.05, status_interval=0.2)


@dataclass
class MemoryChain:
    """A ChainGateway in memory. `script` holds what the next submissions do instead of
    answering: an exception to raise, or a list of results to give."""

    signer: SigningConsortium = field(default_factory=SigningConsortium)
    script: list[BaseException | list[SubmitResult]] = field(default_factory=list)
    receipts: dict[bytes, dict[str, Any]] = field(default_factory=dict)  # by document
    submissions: list[int] = field(default_factory=list)  # documents per submission
    registered: list[dict[str, Any]] = field(default_factory=list)
    refuse_registration: bool = False
    signers: int | None = None  # node signatures on each receipt (None: every node's)
    url: str = "memory:"

    async def submit(self, documents: Sequence[bytes]) -> list[SubmitResult]:
        self.submissions.append(len(documents))
        if self.script:
            step = self.script.pop(0)
            if isinstance(step, BaseException):
                raise step
            return step
        fresh = [(parse_document(raw), raw) for raw in documents if raw not in self.receipts]
        if fresh:
            device_id = fresh[0][0].device_id
            docs = [(d.counter, raw) for d, raw in fresh]
            signed = self.signer.receipts(docs, device_id, signers=self.signers)
            for (_, raw), receipt in zip(fresh, signed, strict=True):
                self.receipts[raw] = receipt
        new = {raw for _, raw in fresh}
        return [
            SubmitResult(
                SubmitStatus.COMMITTED if raw in new else SubmitStatus.DUPLICATE,
                self.receipts[raw],
                counter=self.receipts[raw]["counter"],
            )
            for raw in documents
        ]

    async def consortium(self) -> bytes:
        return self.signer.raw

    async def consortium_offer(self) -> ConsortiumOffer:
        return ConsortiumOffer(self.signer.raw)

    async def register(
        self,
        *,
        csr: bytes | None = None,
        certificate: bytes | None = None,
        segments: Sequence[bytes] = (),
        enrolment_code: str | None = None,
    ) -> Registration:
        if self.refuse_registration:
            raise ChainRefused("bad_certificate", "not today")
        self.registered.append({"certificate": certificate, "segments": list(segments)})
        return Registration("TC000000000000", certificate or b"", 1, tuple(segments))

    async def allocate_segment(self, device_id: str, request: bytes) -> bytes:
        raise ChainRefused("bad_segment", "this chain allocates no segments")

    async def record_segment(self, device_id: str, raw: bytes) -> None:
        return None

    async def invoice_claimed(
        self, code: str, number: str, date: str, check_code: str
    ) -> bool | None:
        return None

    async def close(self) -> None:
        return None


@dataclass
class Printer:
    fw: Firmware
    link: DeviceLink
    client: DeviceClient  # the link's client (the one on the host end)


@asynccontextmanager
async def memory_printer(
    tmp_path: Path,
    settings: LinkSettings = FAST_LINK,
    metrics: SyncdMetrics | None = None,
) -> AsyncIterator[Printer]:
    """A training printer served in this loop on an in-memory line, and a running, online
    link to it."""
    fw = open_device(tmp_path / "device", training=True, clock=ManualClock(), limits=wide_limits())
    host_end, device_end = memory_pair()
    stop = asyncio.Event()
    server = asyncio.create_task(DeviceServer(fw, device_end).serve(stop))

    async def opener(port: str, **options: Any) -> DeviceClient:
        wanted = ("response_timeout", "max_retries", "on_link_error")
        options = {k: options[k] for k in wanted if k in options}
        return DeviceClient(host_end, **options)

    link = DeviceLink(DeviceConfig(port="loop://", name="till"), settings, metrics, opener=opener)
    link_stop = asyncio.Event()
    link_task = asyncio.create_task(link.run(link_stop))
    try:
        assert await link.wait_online(5), link.last_error
        assert link.client is not None
        yield Printer(fw, link, link.client)
    finally:
        link_stop.set()
        await asyncio.wait_for(link_task, 5)
        await link.close()
        stop.set()
        host_end.close()
        await asyncio.wait_for(server, 5)
        fw.close()
