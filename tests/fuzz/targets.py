"""Fuzz targets: real processes (printer, chain, syncd) and syncd's chain client, each fed
hostile input and checked after every one.

After each input a target asserts that the process still answers its probe
(STATUS, /v1/health) within PROBE_DEADLINE, that its resident memory stays
under the bound, and that its state changed only if it accepted the input.
`Figures` records what was tried and the worst seen, for the test and for
bench/fuzz.py.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import serial
from aiohttp import web

from device.protocol import codec
from device.protocol.commands import ISSUING, Command
from device.protocol.document import format_utc
from device.protocol.framing import MAX_BODY, Frame, FrameDecoder, FrameType, encode_frame
from device.protocol.status import Status
from syncd.chain_client import ChainClient
from syncd.chainport import ChainDown, ChainRefused
from tests.shop import INVOICE, Shop

PROBE_DEADLINE = 1.0
RSS_BOUND_MB = 400.0  # a printer, chain or syncd here runs in 40 to 80 MB
ANSWER_DEADLINE = 10.0  # an input must be answered (or dropped) within this, however bad


@dataclass
class Figures:
    target: str
    inputs: int = 0
    accepted: int = 0
    slowest_answer_s: float = 0.0
    slowest_probe_s: float = 0.0
    peak_rss_mb: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)

    def answered(self, outcome: str, seconds: float) -> None:
        self.inputs += 1
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        self.slowest_answer_s = max(self.slowest_answer_s, seconds)

    def probed(self, seconds: float) -> None:
        self.slowest_probe_s = max(self.slowest_probe_s, seconds)
        assert seconds < PROBE_DEADLINE, f"{self.target}: probe took {seconds:.2f} s"

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("slowest_answer_s", "slowest_probe_s", "peak_rss_mb"):
            out[key] = round(out[key], 4)
        return out


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident set size of a process, in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def check_memory(figures: Figures, pid: int) -> None:
    current, peak = rss_mb(pid)
    figures.peak_rss_mb = max(figures.peak_rss_mb, peak)
    assert current < RSS_BOUND_MB, f"{figures.target}: RSS {current:.0f} MB"


# --- the printer -------------------------------------------------------------------------------

VALID_BODIES: dict[Command, dict[str, Any]] = {
    Command.HELLO: {"versions": [1], "host": "fuzz"},
    Command.INFO: {},
    Command.STATUS: {},
    Command.ISSUE: INVOICE,
    Command.CREDIT: {
        "refers_to": {"code": "011002600111", "number": "00000001"},
        "reason": "returned",
        "items": [{"name": "Tea", "quantity": "-1", "unit_price": 4500, "tax_rate_bp": 1300}],
    },
    Command.X_REPORT: {},
    Command.Z_REPORT: {},
    Command.GET_DOCUMENT: {"counter": 1},
    Command.FETCH: {"from": 1, "max_count": 4, "max_bytes": 4000},
    Command.ACK_SYNC: {"receipts": []},
    Command.CSR: {"taxpayer": {"name": "Shop", "tax_id": "91350100M000100Y43"}},
    Command.LOAD_CERT: {"certificate": b"\xd2\x84"},
    Command.LOAD_SEGMENT: {"segment": b"\xd2\x84"},
    Command.SEGMENT_REQUEST: {"count": 10},
    Command.SET_TIME: {"time": "2026-01-01T00:00:00Z"},
    Command.EXPORT: {"from": 1, "to": 2},
    Command.CONTROL: {"paper_out": False, "cover_open": False},
}
# What a write may change, as STATUS shows it: the rest must never move.
WATCHED = ("counter", "last_hash", "synced_through", "numbers_left")


class PrinterTarget:
    """A printer process on a pty, spoken to frame by frame."""

    def __init__(self, shop: Shop) -> None:
        self.shop = shop
        self.proc = shop.start_device("fuzzed")
        self.port = serial.Serial(str(shop.link("fuzzed")), 115200, timeout=0.05)
        self.decoder = FrameDecoder()
        self.figures = Figures("printer frames")
        self._rid = 1 << 40
        self.state = self._watched()

    def close(self) -> None:
        self.port.close()

    def _next_rid(self) -> int:
        self._rid += 1
        return self._rid

    def exchange(self, command: int, body: bytes, deadline: float) -> Frame | None:
        rid = self._next_rid()
        self.port.write(encode_frame(Frame(FrameType.REQUEST, rid, command, 0, body)))
        return self._await(rid, deadline)

    def _await(self, rid: int, deadline: float) -> Frame | None:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            data = self._read()
            for event in self.decoder.feed(data) if data else ():
                if isinstance(event, Frame) and event.request_id == rid:
                    if event.type == FrameType.RESPONSE:
                        return event
                    if event.type in (FrameType.NAK, FrameType.BUSY):
                        return event
        return None

    def _read(self) -> bytes:
        """What has arrived, waiting at most the port timeout for the first byte."""
        data = bytes(self.port.read(1))
        return data + bytes(self.port.read(self.port.in_waiting)) if data else data

    def status(self) -> dict[str, Any]:
        started = time.monotonic()
        frame = self.exchange(Command.STATUS, b"", PROBE_DEADLINE)
        self.figures.probed(time.monotonic() - started)
        assert frame is not None and frame.status == Status.OK, "printer: STATUS not answered"
        body = codec.decode(frame.body)
        assert isinstance(body, dict)
        return body

    def public_key(self) -> bytes:
        frame = self.exchange(Command.INFO, b"", PROBE_DEADLINE)
        assert frame is not None and frame.status == Status.OK
        key = codec.decode(frame.body)["public_key"]
        assert isinstance(key, bytes)
        return key

    def _watched(self) -> dict[str, Any]:
        body = self.status()
        return {key: body[key] for key in WATCHED}

    def feed_request(self, command: int, body: bytes) -> None:
        body = body[:MAX_BODY]  # a longer one is not a frame; feed_bytes covers those
        started = time.monotonic()
        frame = self.exchange(command, body, ANSWER_DEADLINE)
        seconds = time.monotonic() - started
        assert frame is not None, f"printer: command 0x{command:02x} not answered"
        if frame.type == FrameType.RESPONSE:
            outcome = _status_name(frame.status)
            assert frame.status != Status.INTERNAL_ERROR, f"printer: {frame.body[:300]!r}"
        else:
            outcome = frame.type.name
        self.figures.answered(outcome, seconds)
        accepted = frame.type == FrameType.RESPONSE and frame.status == Status.OK
        self._after(command, accepted)

    def feed_bytes(self, data: bytes) -> None:
        """Raw line bytes (noise, broken frames); whatever the device answers is fine."""
        started = time.monotonic()
        self.port.write(data + b"\x7e")
        self._read()
        self.figures.answered("bytes", time.monotonic() - started)
        self._after(None, False)

    def _after(self, command: int | None, accepted: bool) -> None:
        now = self._watched()
        if accepted and command in ISSUING:
            assert now["counter"] == self.state["counter"] + 1, "printer: counter skipped"
            self.figures.accepted += 1
        elif accepted and command in (Command.ACK_SYNC, Command.LOAD_CERT, Command.LOAD_SEGMENT):
            self.figures.accepted += 1
        else:
            assert now == self.state, f"printer: state moved on a refused input: {now}"
        self.state = now
        check_memory(self.figures, self.proc.proc.pid)


def _status_name(code: int) -> str:
    try:
        return Status(code).name
    except ValueError:
        return f"0x{code:02x}"


# --- HTTP servers: the chain's API and syncd's POS API -----------------------------------------


@dataclass(frozen=True)
class HttpInput:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class HttpTarget:
    """A process serving HTTP, fed requests; a 5xx answer to any of them is a bug."""

    def __init__(self, name: str, url: str, pid: int, probe: str, allowed_5xx: frozenset[int]):
        self.url = url
        host, _, port = url.removeprefix("http://").partition(":")
        self.address = (host, int(port))
        self.pid = pid
        self.probe_path = probe
        self.allowed_5xx = allowed_5xx
        self.figures = Figures(name)

    def request(self, item: HttpInput, timeout: float) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(*self.address, timeout=timeout)
        try:
            conn.request(item.method, item.path, body=item.body or None, headers=item.headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def probe(self) -> dict[str, Any]:
        started = time.monotonic()
        status, raw = self.request(HttpInput("GET", self.probe_path, {}, b""), PROBE_DEADLINE)
        self.figures.probed(time.monotonic() - started)
        assert status == 200, f"{self.figures.target}: probe answered {status}"
        answer = json.loads(raw)
        assert isinstance(answer, dict)
        return answer

    def feed(self, item: HttpInput) -> int | None:
        started = time.monotonic()
        try:
            status, raw = self.request(item, ANSWER_DEADLINE)
        except (http.client.HTTPException, ValueError, UnicodeEncodeError):
            self.figures.answered("not sendable", 0.0)  # the client itself refused it
            return None
        except (TimeoutError, ConnectionError) as exc:
            where = f"{item.method} {item.path[:80]}"
            raise AssertionError(f"{self.figures.target}: {where}: {exc}") from exc
        self.figures.answered(str(status), time.monotonic() - started)
        assert status < 500 or status in self.allowed_5xx, (
            f"{self.figures.target}: {item.method} {item.path[:80]} answered {status}: "
            f"{raw[:300]!r}"
        )
        check_memory(self.figures, self.pid)
        return status

    def feed_raw(self, data: bytes) -> None:
        """Bytes that need not be HTTP at all; the server may answer or close."""
        started = time.monotonic()
        with socket.create_connection(self.address, timeout=ANSWER_DEADLINE) as sock:
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(65536):
                    pass
            except (TimeoutError, ConnectionError):
                pass
        self.figures.answered("raw", time.monotonic() - started)
        check_memory(self.figures, self.pid)


def chain_state(target: HttpTarget) -> tuple[Any, ...]:
    answer = target.probe()
    return answer["height"], answer["mempool"], answer["held"]


def pos_counter(target: HttpTarget) -> int:
    target.probe()
    conn = http.client.HTTPConnection(*target.address, timeout=PROBE_DEADLINE)
    try:
        conn.request("GET", "/v1/status")
        status = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    return int(status["devices"][0]["counter"])


# --- chain answers, as syncd's chain client meets them -----------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes


class FakeChain:
    """A loopback HTTP server that gives whatever answer it is told to, to every request."""

    def __init__(self) -> None:
        self.answer = Answer(200, "application/cbor", b"\xa0")
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def _handle(self, request: web.Request) -> web.Response:
        await request.read()
        a = self.answer
        return web.Response(status=a.status, body=a.body, headers={"Content-Type": a.content_type})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


CALLS = ("submit", "consortium", "register", "allocate_segment", "health")


async def call_client(client: ChainClient, call: str) -> Any:
    if call == "submit":
        return await client.submit([b"\xd2\x84", b"\xd2\x85"])
    if call == "consortium":
        return await client.consortium()
    if call == "register":
        return await client.register(csr=b"\xd2\x84")
    if call == "allocate_segment":
        return await client.allocate_segment("TCFUZZ", b"\xd2\x84")
    return await client.health()


async def feed_answer(
    client: ChainClient, chain: FakeChain, figures: Figures, item: Answer, call: str
) -> None:
    """One answer to one call: a result or ChainDown/ChainRefused, in bounded time."""
    chain.answer = item
    started = time.monotonic()
    try:
        async with asyncio.timeout(ANSWER_DEADLINE):
            await call_client(client, call)
        outcome = "ok"
        figures.accepted += 1
    except ChainDown as exc:
        outcome = f"down:{exc.code}"
    except ChainRefused as exc:
        outcome = "refused"
        assert len(str(exc)) < 2000, "a chain refusal message quotes the whole answer"
    seconds = time.monotonic() - started
    figures.answered(outcome, seconds)
    figures.probed(seconds)  # the client is the process here: its answer is the probe
    check_memory(figures, os.getpid())


def now_utc() -> str:
    return format_utc(time.time())
