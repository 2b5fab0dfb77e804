"""A printer's HELLO, INFO and STATUS answers are checked before syncd keeps them.

A printer answers what its firmware (or a rogue device on the port) puts in a
frame. An answer whose fields are not what docs/PROTOCOL.md defines is a link
fault — the link goes offline with a clear error and tries again — never
something kept and then tripped over: a STATUS with a counter that is text
made every /v1/status and every metrics export raise (int() in describe), and
the link task crash-loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from device.app import open_device
from device.client import DeviceClient
from device.protocol import codec
from device.protocol.clock import ManualClock
from device.protocol.commands import Command
from device.protocol.framing import Frame, FrameDecoder, FrameType, encode_frame
from device.server import DeviceServer
from device.transport import Port, create_pty, open_serial
from syncd import device_answers
from syncd.config import DeviceConfig
from syncd.link import DeviceLink, LinkSettings, LinkState
from syncd.metrics import SyncdMetrics
from syncd.registration import Registrar, RegistrationSettings
from tests.device.conftest import wide_limits


class Rewrite:
    """A host-side port that changes fields of the device's answers to one command."""

    changes: ClassVar[dict[int, dict[str, Any]]] = {}

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
                change = Rewrite.changes.get(event.command)
                if event.type == FrameType.RESPONSE and change and event.status == 0:
                    body = {**codec.decode(event.body), **change}
                    event = Frame(
                        event.type, event.request_id, event.command, 0, codec.encode(body)
                    )
                out.append(encode_frame(event))
            if out:
                return b"".join(out)

    def write(self, data: bytes) -> None:
        self.inner.write(data)

    def close(self) -> None:
        self.inner.close()


async def rewriting_opener(port: str, **options: Any) -> DeviceClient:
    return DeviceClient(
        Rewrite(open_serial(port)),
        response_timeout=options["response_timeout"],
        max_retries=options["max_retries"],
    )


@pytest.fixture
async def link(tmp_path: Path) -> AsyncIterator[DeviceLink]:
    fw = open_device(tmp_path / "device", training=True, clock=ManualClock(), limits=wide_limits())
    device_port = create_pty(tmp_path / "tty")
    device_stop = asyncio.Event()
    device_task = asyncio.create_task(DeviceServer(fw, device_port).serve(device_stop))
    link = DeviceLink(
        DeviceConfig(port=str(tmp_path / "tty"), name="till-1"),
        LinkSettings(response_timeout=0.2, status_interval=0.1, reopen_max=0.1),
        SyncdMetrics(),
        opener=rewriting_opener,
    )
    link_stop = asyncio.Event()
    link_task = asyncio.create_task(link.run(link_stop))
    try:
        yield link
    finally:
        Rewrite.changes = {}
        link_stop.set()
        await asyncio.wait_for(link_task, 10)
        await link.close()
        device_stop.set()
        await asyncio.wait_for(device_task, 10)
        device_port.close()
        fw.close()


BAD_ANSWERS = [
    (Command.STATUS, {"counter": "many"}),
    (Command.STATUS, {"synced_through": [1]}),
    (Command.STATUS, {"blocking": b"\x00" * 10}),
    (Command.STATUS, {"offline_since": b"yesterday"}),
    (Command.STATUS, {"numbers_left": True}),
    (Command.INFO, {"device_id": "x" * 5000}),
    (Command.INFO, {"public_key": "not bytes"}),
    (Command.INFO, {"segments": {"a": 1}}),
]


@pytest.mark.parametrize(("command", "change"), BAD_ANSWERS)
async def test_a_device_answer_of_the_wrong_shape_is_a_link_fault(
    link: DeviceLink, command: Command, change: dict[str, Any]
) -> None:
    Rewrite.changes = {command: change}
    for _ in range(30):  # connect attempts, heartbeats: the link is tried for 1.5 s
        await asyncio.sleep(0.05)
        entry = link.describe()  # what /v1/status shows: it must always be JSON
        json.dumps(entry)
        assert link.metrics is not None
        link.metrics.render()
    assert link.state != LinkState.ONLINE
    assert link.last_error is not None and "answer" in link.last_error, link.last_error
    assert len(link.last_error) < 400
    assert link.status is None or type(link.status.get("counter")) is int
    assert link.device_id is None or len(link.device_id) == 14
    # the device answering well again, the link comes online by itself
    Rewrite.changes = {}
    assert await link.wait_online(5)
    assert type(link.describe()["counter"]) is int


class _Chain:
    """A chain that takes every registration."""

    registered = 0

    async def register(self, **_: Any) -> None:
        _Chain.registered += 1


async def test_the_training_registration_checks_the_info_it_keeps(link: DeviceLink) -> None:
    """Registering a training device asked for INFO again and kept the answer as the link's
    info unchecked, past the checks of the handshake."""
    assert await link.wait_online(5)
    before = dict(link.info or {})
    Rewrite.changes = {Command.INFO: {"segments": {"a": 1}, "public_key": "text"}}
    registrar = Registrar(_Chain(), RegistrationSettings(auto_segments=False))  # type: ignore[arg-type]
    with pytest.raises(device_answers.BadDeviceAnswer):
        await registrar.before_round(link)
    assert link.info == before and _Chain.registered == 0
    Rewrite.changes = {}
    await registrar.before_round(link)
    assert _Chain.registered == 1 and isinstance((link.info or {}).get("segments"), list)
