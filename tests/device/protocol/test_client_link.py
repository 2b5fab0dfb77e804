"""The host's link rules against a scripted device: what it resends, and when."""

from __future__ import annotations

import asyncio
import time
from collections import deque

import pytest

from device.client import DeviceClient, LinkError
from device.loopback import memory_pair
from device.protocol import codec
from device.protocol.commands import Command
from device.protocol.framing import (
    Frame,
    FrameDecoder,
    FrameType,
    encode_content,
    encode_frame,
    escape,
)
from device.protocol.status import DeviceError, Status
from tests.statements import covers


class ScriptedPort:
    """The device's end of a loop:// pair, played by the test: it sees every frame the host
    writes (`host` is the client's port) and says what it likes."""

    def __init__(self) -> None:
        self.host, self.device = memory_pair("scripted")
        self._decoder = FrameDecoder()
        self._sent: deque[tuple[float, Frame]] = deque()

    async def next_sent(self) -> tuple[float, Frame]:
        while not self._sent:
            data = await self.device.read()
            now = time.monotonic()
            for frame in self._decoder.feed(data):
                assert isinstance(frame, Frame)
                self._sent.append((now, frame))
        return self._sent.popleft()

    def send(self, wire: bytes) -> None:
        self.device.write(wire)

    def answer(self, request: Frame, kind: FrameType = FrameType.RESPONSE) -> bytes:
        wire = encode_frame(Frame(kind, request.request_id, request.command, 0, codec.encode({})))
        self.send(wire)
        return wire


async def next_sent(port: ScriptedPort, within: float) -> tuple[float, Frame]:
    return await asyncio.wait_for(port.next_sent(), within)


@covers("s-nak-host")
async def test_a_damaged_response_is_asked_for_again_at_once() -> None:
    port = ScriptedPort()
    client = DeviceClient(port.host, response_timeout=5.0)  # only the damage can explain a resend
    try:
        call = asyncio.create_task(client.request(Command.STATUS))
        _, request = await next_sent(port, 1)
        good = encode_frame(
            Frame(
                FrameType.RESPONSE, request.request_id, request.command, 0, codec.encode({"ok": 1})
            )
        )
        # The CRC fails; the header still names the request. The damage goes into the
        # content before escaping: flipping a wire byte could make a flag or an escape
        # byte (the CRC is random), which is other damage than this test is about.
        content = bytearray(
            encode_content(
                Frame(
                    FrameType.RESPONSE,
                    request.request_id,
                    request.command,
                    0,
                    codec.encode({"ok": 1}),
                )
            )
        )
        content[-1] ^= 0x01
        port.send(b"\x7e" + escape(bytes(content)) + b"\x7e")
        # Within 4 s, under the 5 s response timeout: slack for a loaded machine.
        _, again = await next_sent(port, 4.0)
        assert again == request
        port.send(good)
        assert await asyncio.wait_for(call, 4) == {"ok": 1}
        assert client.stats.damaged_frames == 1 and client.stats.timeouts == 0
        assert client.stats.retransmissions == 1
    finally:
        await client.close()


@covers("s-ack", "s-retries")
async def test_after_an_ack_the_host_polls_each_timeout_without_spending_retries() -> None:
    port = ScriptedPort()
    client = DeviceClient(port.host, response_timeout=0.1, max_retries=2)
    try:
        call = asyncio.create_task(client.request(Command.STATUS))
        sent_at, request = await next_sent(port, 1)
        # The device is busy with it: more ACKs than the retry budget, then the answer.
        for _ in range(5):
            port.answer(request, FrameType.ACK)
            at, again = await next_sent(port, 1.0)
            assert again == request
            assert at - sent_at < 0.5  # one response timeout, not the 10 s long timeout
            sent_at = at
        port.answer(request)
        assert await asyncio.wait_for(call, 1) == {}
        assert client.stats.acks == 5 and client.stats.link_errors == 0
    finally:
        await client.close()


UNREADABLE_BODIES = (b"\xff", b"\xa1\x01\x02", b"\x81\x01", b"\xc2\x41\x01")  # break, int key,
# a list where a map belongs, a bignum tag: each CRC-valid, none a response the host can read


async def test_an_ok_response_that_cannot_be_read_is_outcome_unknown_not_a_refusal() -> None:
    for body in UNREADABLE_BODIES:
        port = ScriptedPort()
        client = DeviceClient(port.host, response_timeout=5.0)
        try:
            call = asyncio.create_task(client.request(Command.ISSUE, {"items": []}))
            _, request = await next_sent(port, 1)
            port.send(
                encode_frame(
                    Frame(FrameType.RESPONSE, request.request_id, request.command, 0, body)
                )
            )
            with pytest.raises(LinkError) as caught:
                await asyncio.wait_for(call, 1)
            assert not isinstance(caught.value, DeviceError)
            assert "outcome is unknown" in str(caught.value), body
        finally:
            await client.close()


async def test_a_refusal_whose_detail_cannot_be_read_is_still_that_refusal() -> None:
    port = ScriptedPort()
    client = DeviceClient(port.host, response_timeout=5.0)
    try:
        call = asyncio.create_task(client.request(Command.ISSUE, {"items": []}))
        _, request = await next_sent(port, 1)
        status = int(Status.PAPER_OUT)
        port.send(
            encode_frame(
                Frame(FrameType.RESPONSE, request.request_id, request.command, status, b"\xff")
            )
        )
        with pytest.raises(DeviceError) as caught:
            await asyncio.wait_for(call, 1)
        assert caught.value.status == Status.PAPER_OUT
    finally:
        await client.close()


@pytest.mark.parametrize("name", ["status", "detail", "self"])
async def test_a_refusal_whose_info_names_a_constructor_argument_is_still_that_refusal(
    name: str,
) -> None:
    """from_response passed the answer's `info` map as keyword arguments: an entry named
    `status`, `detail` or `self` raised TypeError out of the client (a 500 for the till,
    a crashed link task at the handshake) instead of giving the refusal."""
    port = ScriptedPort()
    client = DeviceClient(port.host, response_timeout=5.0)
    try:
        call = asyncio.create_task(client.request(Command.ISSUE, {"items": []}))
        _, request = await next_sent(port, 1)
        body = {"error": "PAPER_OUT", "detail": "load paper", "info": {name: 7, "seen": 1}}
        status = int(Status.PAPER_OUT)
        port.send(
            encode_frame(
                Frame(
                    FrameType.RESPONSE,
                    request.request_id,
                    request.command,
                    status,
                    codec.encode(body),
                )
            )
        )
        with pytest.raises(DeviceError) as caught:
            await asyncio.wait_for(call, 1)
        assert caught.value.status == Status.PAPER_OUT
        assert caught.value.detail == "load paper"
        assert caught.value.info == {name: 7, "seen": 1}
    finally:
        await client.close()


@covers("s-retries")
async def test_naks_spend_retries_like_timeouts_do() -> None:
    """Every retransmission counts toward max_retries except those after BUSY and the polls
    after an ACK: a device that NAKs every copy fails the request after 1 + 5 sends."""
    port = ScriptedPort()
    client = DeviceClient(port.host, response_timeout=30.0)  # only the NAKs drive resends
    try:
        call = asyncio.create_task(client.request(Command.STATUS))
        sends = []
        for _ in range(1 + 5):
            _, request = await next_sent(port, 4.0)
            sends.append(request)
            port.answer(request, FrameType.NAK)
        with pytest.raises(LinkError):
            await asyncio.wait_for(call, 4.0)
        assert len(set(sends)) == 1
        with pytest.raises(asyncio.TimeoutError):  # and no seventh copy
            await next_sent(port, 0.3)
        assert client.stats.naks == 6 and client.stats.retransmissions == 5
    finally:
        await client.close()


@covers("s-retries", "s-busy")
async def test_busy_does_not_spend_retries() -> None:
    port = ScriptedPort()
    client = DeviceClient(port.host, response_timeout=30.0, max_retries=1)
    try:
        call = asyncio.create_task(client.request(Command.STATUS))
        for _ in range(4):  # more BUSY answers than retries, each resent after the pause
            _, request = await next_sent(port, 4.0)
            port.answer(request, FrameType.BUSY)
        _, request = await next_sent(port, 4.0)
        port.answer(request)
        assert await asyncio.wait_for(call, 4.0) == {}
        assert client.stats.busy == 4 and client.stats.link_errors == 0
    finally:
        await client.close()
