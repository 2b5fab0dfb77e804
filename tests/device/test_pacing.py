"""A paced port behaves like a UART: line-rate arithmetic (time injected) and one real pty."""

from __future__ import annotations

import asyncio
import os
import time
import tty
from pathlib import Path

import pytest

from device.pacing import Pacer, bits_per_byte, bytes_per_second, wire_seconds
from device.transport import open_serial


def test_bits_per_byte_follow_the_framing() -> None:
    assert bits_per_byte("N", 1) == 10  # 8N1
    assert bits_per_byte("E", 1) == 11  # 8E1
    assert bits_per_byte("n", 2) == 11  # 8N2
    assert bits_per_byte("O", 2) == 12  # 8O2
    assert bits_per_byte("N", 1.5) == 10.5
    assert bytes_per_second(9600) == 960
    assert bytes_per_second(115200, "E", 1) == pytest.approx(10472.7, abs=0.1)
    assert wire_seconds(960, 9600) == 1.0


def test_an_idle_line_starts_at_once_a_busy_one_queues() -> None:
    pacer = Pacer(960.0)
    assert pacer.send(96, now=10.0) == pytest.approx(0.1)
    # handed over halfway through: waits for the first 96 bytes, then takes its own time
    assert pacer.send(96, now=10.05) == pytest.approx(0.15)
    assert pacer.busy_for(10.1) == pytest.approx(0.1)
    # a line does not save up idle time: after a pause it is just idle
    assert pacer.busy_for(20.0) == 0
    assert pacer.send(48, now=20.0) == pytest.approx(0.05)


def test_a_late_sender_within_a_burst_loses_no_line_time_up_to_the_catch_up() -> None:
    pacer = Pacer(1000.0)
    assert pacer.send(10, now=0.0) == pytest.approx(0.01)  # free at 0.010
    # woken 4 ms late: the UART would have gone on sending, so this piece ends at 0.020
    assert pacer.send(10, now=0.014, catch_up=0.05) == pytest.approx(0.006)
    # without catch-up the 4 ms are lost, as after a real pause
    assert pacer.send(10, now=0.030) == pytest.approx(0.01)
    # never more than the catch-up: 1 s late, only 50 ms are made up
    assert pacer.send(10, now=1.04, catch_up=0.05) == pytest.approx(-0.04)


def test_a_line_rate_is_positive() -> None:
    with pytest.raises(ValueError, match="more than 0"):
        Pacer(0)


async def test_the_host_side_of_a_pty_is_paced_when_asked(tmp_path: Path) -> None:
    """open_serial(pace=True) at 96,000 baud 8N1 is 9,600 bytes/s: 1,200 bytes take 0.125 s,
    where the same pty unpaced moves them in one write."""
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    link = tmp_path / "tty"
    os.symlink(os.ttyname(slave), link)
    host = open_serial(str(link), baud=96_000, pace=True)
    os.set_blocking(master, False)
    try:
        start = time.monotonic()
        host.write(bytes(1200))
        got = b""
        while len(got) < 1200 and time.monotonic() - start < 10:
            await asyncio.sleep(0.005)
            try:
                got += os.read(master, 65536)
            except BlockingIOError:
                continue
        assert got == bytes(1200)
        assert time.monotonic() - start >= 0.1
    finally:
        host.close()
        os.close(master)
        os.close(slave)


async def test_syncd_paces_a_printer_when_its_config_says_so(tmp_path: Path) -> None:
    from syncd import config
    from syncd.link import DeviceLink, LinkSettings

    path = tmp_path / "syncd.toml"
    path.write_text(
        '[chain]\nurls = ["http://127.0.0.1:1"]\n'
        '[[device]]\nport = "/dev/a"\nbaud = 9600\npace = true\n'
        '[[device]]\nport = "/dev/b"\n'
    )
    paced, plain = config.load(config.namespace(["--config", str(path)])).devices
    assert (paced.pace, plain.pace) == (True, False)
    asked: list[dict[str, object]] = []

    async def opener(port: str, **kwargs: object) -> None:
        asked.append({"port": port, **kwargs})
        raise OSError("no port here")

    for device in (paced, plain):
        await DeviceLink(device, LinkSettings(), opener=opener)._connect()
    assert asked[0]["pace"] is True and asked[0]["baud"] == 9600
    assert "pace" not in asked[1]  # openers that predate pacing still work


async def test_on_a_paced_line_an_answer_overtakes_pages_not_yet_sent(tmp_path: Path) -> None:
    """Sync yields to sales: a page (write_bulk) waits while anything else waits, and a
    frame already on the wire is finished first, never cut."""
    from device.transport import create_pty

    port = create_pty(tmp_path / "tty", baud=96_000, pace=True)  # 9,600 bytes/s
    host = open_serial(str(tmp_path / "tty"))
    page_a, page_b, sale = (
        b"\x7e" + b"a" * 400 + b"\x7e",
        b"\x7e" + b"b" * 400 + b"\x7e",
        b"\x7eS\x7e",
    )
    try:
        port.write_bulk(page_a)
        port.write_bulk(page_b)
        await asyncio.sleep(0.01)  # page A is on the wire now
        port.write(sale)
        got = b""
        deadline = time.monotonic() + 10
        while len(got) < len(page_a + page_b + sale) and time.monotonic() < deadline:
            got += await asyncio.wait_for(host.read(), 10)
        assert got == page_a + sale + page_b
    finally:
        host.close()
        port.close()


class _SlowLine:
    """A host port whose answers the test feeds in by hand, a few bytes at a time."""

    name = "slow"

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.incoming: asyncio.Queue[bytes] = asyncio.Queue()

    async def read(self) -> bytes:
        return await self.incoming.get()

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.incoming.put_nowait(b"")


async def test_an_answer_still_arriving_is_not_asked_for_again() -> None:
    """At 9,600 baud an ISSUE answer takes about a second on the wire, the response timeout
    is 1 s: the client retransmitted in the middle of it, and the device queued the same
    answer again behind it."""
    from device.client import DeviceClient
    from device.protocol import codec
    from device.protocol.framing import Frame, FrameDecoder, FrameType, encode_frame

    line = _SlowLine()
    client = DeviceClient(line, response_timeout=0.1)
    try:
        asked = asyncio.create_task(client.status())
        await asyncio.sleep(0.01)
        (request,) = FrameDecoder().feed(line.written[0])
        assert isinstance(request, Frame)
        body = codec.encode({"filler": bytes(300)})
        wire = encode_frame(Frame(FrameType.RESPONSE, request.request_id, request.command, 0, body))
        for start in range(0, len(wire), 10):  # 0.6 s of answer, six response timeouts
            line.incoming.put_nowait(wire[start : start + 10])
            await asyncio.sleep(0.02)
        assert await asyncio.wait_for(asked, 5) == {"filler": bytes(300)}
        assert client.stats.retransmissions == 0 and len(line.written) == 1
    finally:
        await client.close()


async def test_on_a_physical_line_answers_queued_behind_others_are_not_late() -> None:
    """The time the line spends bringing other answers does not count against a request's
    response timeout: at 100 bytes/s, 330 bytes of A's answer are 3.3 s in which B's answer
    could not have come, so B is not asked for again 0.5 s later."""
    from device.client import DeviceClient
    from device.protocol import codec
    from device.protocol.framing import Frame, FrameDecoder, FrameType, encode_frame

    for line_rate, retransmitted in ((None, True), (100.0, False)):
        line = _SlowLine()
        client = DeviceClient(line, response_timeout=0.1, line_rate=line_rate)
        try:
            a, b = asyncio.create_task(client.status()), asyncio.create_task(client.info())
            await asyncio.sleep(0.01)
            frames = [f for w in line.written for f in FrameDecoder().feed(w)]
            answers = [
                encode_frame(
                    Frame(FrameType.RESPONSE, f.request_id, f.command, 0, codec.encode({"x": 1}))
                )
                for f in frames
                if isinstance(f, Frame)
            ]
            line.incoming.put_nowait(answers[0] + bytes(300))  # A's answer and line fill
            await asyncio.sleep(0.5)
            line.incoming.put_nowait(answers[1])
            assert await asyncio.wait_for(a, 5) == await asyncio.wait_for(b, 5) == {"x": 1}
            assert (client.stats.retransmissions > 0) is retransmitted, line_rate
        finally:
            await client.close()
