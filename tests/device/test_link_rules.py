"""The link rules of docs/PROTOCOL.md §2-3 against the real device server.

The server runs on an in-memory port in this event loop (as for the test
vectors), so a test decides exactly which bytes arrive together; one test
uses a real pty to check what a client must set on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import termios
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from device.app import open_device
from device.firmware import Firmware
from device.loopback import MemoryPort, memory_pair
from device.protocol import codec, framing
from device.protocol.clock import ManualClock
from device.protocol.commands import Command
from device.protocol.framing import (
    FLAG,
    Frame,
    FrameDecoder,
    FrameType,
    NakReason,
    encode_content,
    encode_frame,
    escape,
)
from device.protocol.status import Status
from device.server import DeviceServer
from device.transport import create_pty
from device.writer import WriteRequest
from tests.device.conftest import INVOICE, wide_limits
from tests.statements import covers


@dataclass
class Served:
    fw: Firmware
    server: DeviceServer
    host: MemoryPort  # the test's end of the loop:// pair; the device serves the other
    decoder: FrameDecoder

    async def send(self, wire: bytes, *, expect: int = 1, within: float = 5.0) -> list[Frame]:
        """Deliver `wire` in one read; the next `expect` frames the device writes."""
        self.host.write(wire)
        return await self.frames(expect, within)

    async def frames(self, expect: int, within: float = 5.0) -> list[Frame]:
        got: list[Frame] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while len(got) < expect:
            left = deadline - loop.time()
            assert left > 0, f"only {got} of {expect} frames within {within} s"
            try:
                written = await asyncio.wait_for(self.host.read(), left)
            except TimeoutError:
                continue
            for event in self.decoder.feed(written):
                assert isinstance(event, Frame), event
                got.append(event)
        return got

    async def ask(self, rid: int, command: Command, body: bytes) -> Frame:
        (answer,) = await self.send(encode_frame(Frame(FrameType.REQUEST, rid, command, 0, body)))
        assert answer.type == FrameType.RESPONSE and answer.request_id == rid, answer
        return answer


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Any]:
    running: list[tuple[Served, asyncio.Event, asyncio.Task[None]]] = []

    async def starter(state: Path | None = None, **options: Any) -> Served:
        options.setdefault("training", True)
        options.setdefault("limits", wide_limits())
        max_in_flight = options.pop("max_in_flight", 64)
        fw = open_device(state or tmp_path / "state", clock=ManualClock(), **options)
        host, port = memory_pair("link-rules")
        server = DeviceServer(fw, port, max_in_flight=max_in_flight)
        stop = asyncio.Event()
        task = asyncio.create_task(server.serve(stop))
        served = Served(fw, server, host, FrameDecoder())
        running.append((served, stop, task))
        return served

    async def stop_all() -> None:
        while running:
            served, stop, task = running.pop()
            stop.set()
            await asyncio.wait_for(task, 10)
            served.fw.close()

    starter.stop_all = stop_all  # type: ignore[attr-defined]
    yield starter
    await stop_all()


def request(rid: int, command: Command, body: dict[str, Any] | None = None) -> bytes:
    return encode_frame(Frame(FrameType.REQUEST, rid, command, 0, codec.encode(body or {})))


def raw(content: bytes) -> bytes:
    return bytes([FLAG]) + escape(content) + bytes([FLAG])


# --- NAK ---------------------------------------------------------------------------------


@covers("s-nak-id", "s-nak-when", "s-nak-truncated", "s-control-frames")
async def test_every_damaged_frame_with_a_header_is_naked_with_that_header_id(serve: Any) -> None:
    """On the old device a frame cut to 14-17 bytes got no NAK, and the NAK of an invalid
    escape or of an over-long frame carried id 0."""
    s: Served = await serve()
    content = encode_content(Frame(FrameType.REQUEST, 0x5151, Command.STATUS, 0, b"\xa0"))
    damaged_fcs = bytearray(content)
    damaged_fcs[-1] ^= 1
    head = framing.HEADER.pack(1, FrameType.REQUEST, 0x5454, Command.ISSUE, 0, 0xFFFF)
    cases = [
        (raw(bytes(damaged_fcs)), 0x5151, NakReason.BAD_FCS),
        (raw(content[:16]), 0x5151, NakReason.TRUNCATED),
        (raw(content[:14]), 0x5151, NakReason.TRUNCATED),
        (raw(content)[:-1] + bytes([framing.ESCAPE, FLAG]), 0x5151, NakReason.BAD_ESCAPE),
        (raw(head + bytes(framing.MAX_CONTENT)), 0x5454, NakReason.TOO_LONG),
        (raw(head + b"\x00" * framing.MAX_ESCAPED), 0x5454, NakReason.TOO_LONG),  # unbuffered
    ]
    for wire, rid, reason in cases:
        (nak,) = await s.send(wire)
        assert nak == Frame(FrameType.NAK, rid, 0, reason, b""), (reason, nak)
    # Shorter than a header: noise, no answer; the next request is answered as usual.
    s.host.write(raw(content[:13]) + raw(b"\x01\x02"))
    answer = await s.ask(0x5252, Command.STATUS, b"")
    assert answer.status == Status.OK
    assert s.fw.since_start.naks_sent == len(cases)


# --- ACK and BUSY ------------------------------------------------------------------------


@covers("s-control-frames", "s-ack", "s-busy")
async def test_ack_and_busy_frames_echo_the_request_id_and_command(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old device's timed ACK carried command 0, its other ACKs and BUSY the request's."""
    s: Served = await serve(max_in_flight=1)
    held: list[WriteRequest] = []
    submit = s.server.writer.submit
    monkeypatch.setattr(s.server.writer, "submit", held.append)  # a slow journal, say
    issue = request(0xA1, Command.ISSUE, INVOICE)
    (ack,) = await s.send(issue)  # no answer within 0.2 s: the device says it is on it
    assert ack == Frame(FrameType.ACK, 0xA1, Command.ISSUE, 0, b"")
    (again,) = await s.send(issue)  # a retransmission while it works: another ACK
    assert again == Frame(FrameType.ACK, 0xA1, Command.ISSUE, 0, b"")
    (busy,) = await s.send(request(0xA2, Command.STATUS))  # max_in_flight = 1 is taken
    assert busy == Frame(FrameType.BUSY, 0xA2, Command.STATUS, 0, b"")
    submit(held.pop())
    (answer,) = await s.frames(1)
    assert (answer.type, answer.request_id, answer.status) == (FrameType.RESPONSE, 0xA1, 0)
    assert s.fw.journal.count() == 1


# --- exactly-once ------------------------------------------------------------------------


def reordered(value: Any) -> Any:
    """The same value with every map's keys in reverse canonical order."""
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: (len(k), k), reverse=True)
        return {k: reordered(value[k]) for k in keys}
    if isinstance(value, list):
        return [reordered(v) for v in value]
    return value


@covers("s-exactly-once-same")
async def test_the_same_body_in_another_key_order_is_the_same_request(
    serve: Any, tmp_path: Path
) -> None:
    """The old device compared bytes: a host that re-encoded a retried request with its
    map keys in another order (a Go map, say) was refused REQUEST_ID_REUSED."""
    s: Served = await serve()
    canonical = codec.encode(INVOICE)
    other_order = codec.encode_ordered(reordered(INVOICE))
    assert other_order != canonical and codec.decode(other_order) == INVOICE
    first = await s.ask(0xB1, Command.ISSUE, canonical)
    assert first.status == Status.OK
    assert await s.ask(0xB1, Command.ISSUE, other_order) == first  # from memory
    x_report = await s.ask(0xB2, Command.X_REPORT, b"")  # empty body means {}
    assert await s.ask(0xB2, Command.X_REPORT, b"\xa0") == x_report
    changed = codec.encode({"items": INVOICE["items"][:1]})
    refused = await s.ask(0xB1, Command.ISSUE, changed)
    assert refused.status == Status.REQUEST_ID_REUSED
    assert s.fw.journal.count() == 2
    await serve.stop_all()
    # After a restart the answer comes from the journal: the same rule.
    s2: Served = await serve(state=tmp_path / "state")
    assert await s2.ask(0xB1, Command.ISSUE, other_order) == first
    assert (await s2.ask(0xB1, Command.ISSUE, changed)).status == Status.REQUEST_ID_REUSED
    assert s2.fw.journal.count() == 2 and s2.fw.since_start.replays == 1


# --- what the escapes and the line allow -------------------------------------------------


@covers("s-escape-decode")
async def test_a_request_from_a_framer_that_escapes_control_bytes_is_answered(
    serve: Any,
) -> None:
    s: Served = await serve()
    content = encode_content(Frame(FrameType.REQUEST, 0x0A0D1113, Command.STATUS, 0, b"\xa0"))
    escaped = bytearray([FLAG])
    for byte in content:
        if byte < 0x20 or byte in (FLAG, framing.ESCAPE):
            escaped += bytes([framing.ESCAPE, byte ^ 0x20])
        else:
            escaped.append(byte)
    (answer,) = await s.send(bytes(escaped) + bytes([FLAG]))
    assert (answer.type, answer.request_id, answer.status) == (FrameType.RESPONSE, 0x0A0D1113, 0)


RAW_OFF = {
    "lflag": termios.ECHO | termios.ICANON | termios.ISIG | termios.IEXTEN,
    "iflag": termios.IXON
    | termios.IXOFF
    | termios.ICRNL
    | termios.INLCR
    | termios.IGNCR
    | termios.ISTRIP
    | termios.BRKINT
    | termios.PARMRK,
    "oflag": termios.OPOST,
}


@covers("s-pty-raw")
async def test_the_emulator_pty_is_raw_and_passes_every_byte(tmp_path: Path) -> None:
    link = tmp_path / "tty"
    device_side = create_pty(link)
    host = os.open(link, os.O_RDWR | os.O_NOCTTY)  # no pyserial: the line as created
    try:
        iflag, oflag, cflag, lflag, *_ = termios.tcgetattr(host)
        assert not lflag & RAW_OFF["lflag"] and not iflag & RAW_OFF["iflag"]
        assert not oflag & RAW_OFF["oflag"]
        assert cflag & termios.CSIZE == termios.CS8
        every_byte = bytes(range(256)) * 4
        os.write(host, every_byte)
        got = b""
        while len(got) < len(every_byte):
            got += await asyncio.wait_for(device_side.read(), 5)
        assert got == every_byte  # no CR/NL translation, no XON/XOFF, no ^C, no echo
        device_side.write(every_byte)
        got = b""
        os.set_blocking(host, False)
        for _ in range(1000):
            if len(got) == len(every_byte):
                break
            await asyncio.sleep(0.005)  # the device side writes from the event loop
            with contextlib.suppress(BlockingIOError):
                got += os.read(host, 4096)
        assert got == every_byte
    finally:
        os.close(host)
        device_side.close()


# --- HELLO, INFO and unknown fields ------------------------------------------------------


@covers("s-hello-optional", "s-max-body")
async def test_hello_is_optional_and_max_body_is_the_largest_body_accepted(serve: Any) -> None:
    s: Served = await serve()
    assert (await s.ask(0xC1, Command.STATUS, b"")).status == Status.OK  # no HELLO first
    hello = codec.decode((await s.ask(0xC2, Command.HELLO, codec.encode({"versions": [1]}))).body)
    assert hello["max_body"] == framing.MAX_BODY
    body = {"versions": [1], "host": ""}
    body["host"] = "h" * (hello["max_body"] - len(codec.encode(body)) - 2)
    largest = codec.encode(body)
    assert len(largest) == hello["max_body"]
    assert (await s.ask(0xC3, Command.HELLO, largest)).status == Status.OK


@covers("s-unknown-fields")
async def test_unknown_fields_are_refused_and_nothing_happens(serve: Any) -> None:
    s: Served = await serve()
    tea = INVOICE["items"][0]
    cases = [
        (Command.STATUS, {"verbose": True}, Status.BAD_REQUEST),
        (Command.FETCH, {"From": 1}, Status.BAD_REQUEST),
        (Command.X_REPORT, {"note": "x"}, Status.BAD_REQUEST),
        (Command.ISSUE, dict(INVOICE, discount=5), Status.INVALID_INVOICE),
        (Command.ISSUE, {"items": [dict(tea, sku="1")]}, Status.INVALID_INVOICE),
        (Command.ACK_SYNC, {"receipts": [], "extra": 1}, Status.BAD_REQUEST),
    ]
    for rid, (command, body, status) in enumerate(cases, start=0xD0):
        answer = await s.ask(rid, command, codec.encode(body))
        assert answer.status == status, (command, body)
    assert s.fw.journal.count() == 0


@covers("s-tax-rates")
async def test_info_lists_the_tax_rates_in_ascending_order(serve: Any) -> None:
    s: Served = await serve(tax_rates=frozenset({1300, 0, 900, 600}))
    info = codec.decode((await s.ask(0xE1, Command.INFO, b"")).body)
    assert info["tax_rates"] == [0, 600, 900, 1300]
