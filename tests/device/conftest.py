from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from device.app import open_device
from device.client import DeviceClient
from device.firmware import Firmware
from device.limits import Limits
from device.protocol.clock import ManualClock
from device.server import DeviceServer
from device.transport import Port, create_pty

TEA = {"name": "Tea", "quantity": "2", "unit_price": 1250, "tax_rate_bp": 1300}
INVOICE: dict[str, Any] = {
    "buyer": {"name": "ACME Trading", "tax_id": "91350100M000100Y43"},
    "items": [TEA, {"name": "Cup", "quantity": "1", "unit_price": 800, "tax_rate_bp": 900}],
}


@dataclass
class Harness:
    """A device served on a real pty in this event loop, and a host client on its link."""

    fw: Firmware
    server: DeviceServer
    client: DeviceClient
    port: Port
    stop: asyncio.Event
    task: asyncio.Task[None]
    state: Path
    clock: ManualClock

    async def close(self) -> None:
        await self.client.close()
        self.stop.set()
        await asyncio.wait_for(self.task, 10)
        self.port.close()
        self.fw.close()  # as `taxctl device run` does on the way out

    def snapshot(self) -> dict[str, Any]:
        """Everything a refusal must leave untouched."""
        fw = self.fw
        return {
            "counter": fw.head.counter,
            "last_hash": fw.head.last_hash,
            "journal": fw.journal.count(),
            "backlog": (fw.backlog.count, fw.backlog.amount, fw.backlog.oldest_at),
            "period": fw.period.to_record(),
            "numbers_left": fw.credentials.numbers_left(),
            "synced_through": fw.synced_through,
        }


Starter = Callable[..., "asyncio.Future[Harness] | Any"]


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    harnesses: list[Harness] = []

    async def starter(
        *,
        state: Path | None = None,
        clock: ManualClock | None = None,
        response_timeout: float = 1.0,
        max_retries: int = 5,
        link: Path | None = None,
        wrap_port: Callable[[Port], Port] | None = None,
        **options: Any,
    ) -> Harness:
        clock = clock or ManualClock()
        state = state or tmp_path / "state"
        options.setdefault("training", True)
        fw = open_device(state, clock=clock, **options)
        link = link or tmp_path / "tty"
        port = create_pty(link)
        server = DeviceServer(fw, port)
        stop = asyncio.Event()
        task = asyncio.create_task(server.serve(stop))
        client_port = await _open_host_port(link)
        if wrap_port is not None:
            client_port = wrap_port(client_port)
        client = DeviceClient(
            client_port, response_timeout=response_timeout, max_retries=max_retries
        )
        harness = Harness(fw, server, client, port, stop, task, state, clock)
        harnesses.append(harness)
        return harness

    yield starter
    for harness in harnesses:
        if not harness.task.done():
            await harness.close()


async def _open_host_port(link: Path) -> Port:
    from device.transport import open_serial

    return open_serial(str(link))


def wide_limits() -> Limits:
    return Limits(offline_seconds=10**9, offline_amount=10**15)


@pytest.fixture
def fw(tmp_path: Path) -> Iterator[Firmware]:
    """A training printer's firmware, no link, limits out of the way."""
    opened = open_device(tmp_path / "state", training=True, limits=wide_limits())
    yield opened
    opened.close()
