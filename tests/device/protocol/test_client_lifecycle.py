"""DeviceClient's lifecycle and its HELLO adaptation, against a device end played by the test."""

from __future__ import annotations

import asyncio

import pytest

from device import transport
from device.client import DeviceClient, LinkError, NoAnswer, UnreadableResponse
from device.errors import OutcomeUnknown, PortError, Refused, TaxctlError
from device.loopback import MemoryPort, memory_pair
from device.protocol import codec
from device.protocol.commands import HOST_MAX_IN_FLIGHT, Command
from device.protocol.framing import Frame, FrameDecoder, FrameType, encode_frame
from device.protocol.status import DeviceError, Status


class FarEnd:
    """The device's end of a memory pair, answered by the test."""

    def __init__(self, port: MemoryPort) -> None:
        self.port = port
        self.decoder = FrameDecoder()
        self.frames: list[Frame] = []

    async def requests(self, count: int, within: float = 2.0) -> list[Frame]:
        """Wait until `count` request frames in all have arrived."""

        async def gather() -> None:
            while len(self.frames) < count:
                data = await self.port.read()
                assert data, "the host end closed"
                self.frames += [f for f in self.decoder.feed(data) if isinstance(f, Frame)]

        await asyncio.wait_for(gather(), within)
        return self.frames

    async def drain(self, quiet: float = 0.2) -> None:
        """Read until nothing more arrives for `quiet` seconds."""
        while True:
            try:
                data = await asyncio.wait_for(self.port.read(), quiet)
            except TimeoutError:
                return
            self.frames += [f for f in self.decoder.feed(data) if isinstance(f, Frame)]

    def answer(self, request: Frame, body: dict[str, object]) -> None:
        wire = Frame(FrameType.RESPONSE, request.request_id, request.command, 0, codec.encode(body))
        self.port.write(encode_frame(wire))


def test_a_client_can_be_made_outside_a_running_loop() -> None:
    """It started its tasks in __init__: without a running loop that raised RuntimeError."""
    host, _ = memory_pair()
    client = DeviceClient(host)
    assert not client.closed and client.max_in_flight == HOST_MAX_IN_FLIGHT


def test_a_client_made_outside_a_loop_works_in_one_later() -> None:
    host, device = memory_pair()
    client = DeviceClient(host, response_timeout=5.0)

    async def use() -> object:
        far = FarEnd(device)
        call = asyncio.create_task(client.status())
        (request,) = await far.requests(1)
        far.answer(request, {"ok": True})
        try:
            return await asyncio.wait_for(call, 2)
        finally:
            await client.close()

    assert asyncio.run(use()) == {"ok": True}


async def test_async_with_starts_and_closes_the_client() -> None:
    host, device = memory_pair()
    far = FarEnd(device)
    async with DeviceClient(host, response_timeout=5.0) as client:
        call = asyncio.create_task(client.status())
        (request,) = await far.requests(1)
        far.answer(request, {"ok": True})
        assert await asyncio.wait_for(call, 2) == {"ok": True}
    assert device.closed  # closing the client closed its port: the far end sees the cable go


async def test_closing_a_client_that_never_started_returns_at_once() -> None:
    host, _ = memory_pair()
    await asyncio.wait_for(DeviceClient(host).close(), 1)
    assert host.closed


async def _in_flight_after_hello(announced: object, configured: int = 32) -> tuple[int, int]:
    """(the client's window after HELLO, the most of 12 requests outstanding at once)."""
    host, device = memory_pair()
    far = FarEnd(device)
    async with DeviceClient(host, response_timeout=5.0, max_in_flight=configured) as client:
        hello = asyncio.create_task(client.hello())
        (request,) = await far.requests(1)
        far.answer(request, {"version": 1, "max_in_flight": announced})
        await asyncio.wait_for(hello, 2)
        calls = [asyncio.create_task(client.status()) for _ in range(12)]
        answered = most = 0
        while answered < 12:
            await far.drain()  # every request the window lets through is on the line now
            waiting = far.frames[1 + answered :]
            most = max(most, len(waiting))
            for frame in waiting:
                far.answer(frame, {})
            answered += len(waiting)
        await asyncio.wait_for(asyncio.gather(*calls), 2)
        return client.max_in_flight, most


async def test_the_client_keeps_no_more_in_flight_than_the_device_announced() -> None:
    """The device announced 4; the client, configured for 32, sent 12 at once before."""
    assert await _in_flight_after_hello(4) == (4, 4)


async def test_a_larger_announcement_does_not_widen_the_configured_window() -> None:
    assert await _in_flight_after_hello(64, configured=8) == (8, 8)


@pytest.mark.parametrize("announced", [0, -1, "4", None, True])
async def test_a_senseless_announcement_leaves_the_window_alone(announced: object) -> None:
    assert await _in_flight_after_hello(announced, configured=12) == (12, 12)


def test_every_error_is_one_of_three_kinds_of_one_base() -> None:
    assert issubclass(DeviceError, Refused) and issubclass(Refused, TaxctlError)
    for kind in (LinkError, NoAnswer, UnreadableResponse):
        assert issubclass(kind, OutcomeUnknown) and issubclass(kind, ConnectionError)
    assert transport.PortError is PortError and issubclass(PortError, OSError)
    assert issubclass(OutcomeUnknown, TaxctlError) and issubclass(PortError, TaxctlError)
    refused = DeviceError(Status.PAPER_OUT, "load paper")
    assert refused.status == Status.PAPER_OUT and refused.code == "PAPER_OUT"


async def test_a_refusal_before_sending_is_a_refused() -> None:
    host, _ = memory_pair()
    async with DeviceClient(host) as client:
        with pytest.raises(Refused) as caught:
            await client.request(Command.ISSUE, {"items": ["x" * 70_000]})
    assert caught.value.status == Status.BODY_TOO_LARGE
