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

from device.protocol import codec
from device.protocol.commands import Command
from device.protocol.framing import Frame, FrameType
from syncd import device_answers
from syncd.link import DeviceLink, LinkSettings, LinkState
from syncd.metrics import SyncdMetrics
from syncd.registration import Registrar, RegistrationSettings
from tests.syncd.inprocess import printer_link, rewriting_opener


class Rewrite:
    """Changes fields of the device's good answers to one command (the frame stays intact)."""

    changes: ClassVar[dict[int, dict[str, Any]]] = {}

    def __call__(self, frame: Frame) -> Frame:
        change = Rewrite.changes.get(frame.command)
        if frame.type != FrameType.RESPONSE or not change or frame.status != 0:
            return frame
        body = {**codec.decode(frame.body), **change}
        return Frame(frame.type, frame.request_id, frame.command, 0, codec.encode(body))


@pytest.fixture
async def link(tmp_path: Path) -> AsyncIterator[DeviceLink]:
    settings = LinkSettings(response_timeout=0.2, status_interval=0.1, reopen_max=0.1)
    opener = rewriting_opener(Rewrite())
    try:
        async with printer_link(tmp_path, settings, opener=opener, metrics=SyncdMetrics()) as (
            _,
            printer,
        ):
            yield printer
    finally:
        Rewrite.changes = {}


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
    assert link.status is None or type(link.status.counter) is int
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
    before = link.info
    Rewrite.changes = {Command.INFO: {"segments": {"a": 1}, "public_key": "text"}}
    registrar = Registrar(_Chain(), RegistrationSettings(auto_segments=False))  # type: ignore[arg-type]
    with pytest.raises(device_answers.BadDeviceAnswer):
        await registrar.before_round(link)
    assert link.info == before and _Chain.registered == 0
    Rewrite.changes = {}
    await registrar.before_round(link)
    assert _Chain.registered == 1 and link.info is not None
    assert all(isinstance(s, bytes) for s in link.info.segments)


async def test_a_training_registration_counts_as_the_chain_answering(link: DeviceLink) -> None:
    """After a successful registration systemd's STATUS said 'chain unknown': the
    registration is an answer from the chain, so the shared health says ok."""
    from syncd.chainhealth import ChainHealth
    from syncd.notify import status_line

    Rewrite.changes = {}
    assert await link.wait_online(5)
    health = ChainHealth()
    registrar = Registrar(
        _Chain(),  # type: ignore[arg-type]
        RegistrationSettings(auto_segments=False),
        health=health,
    )
    assert health.word == "unknown"
    await registrar.before_round(link)
    assert health.word == "ok"
    assert status_line(1, 1, 0, health.word) == "1 device, 0 pending, chain ok"
