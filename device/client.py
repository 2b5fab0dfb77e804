"""The host side of the device protocol: requests, retransmission, exactly-once.

One DeviceClient per port. Many requests may be outstanding at once
(pipelining); each is matched to its response by request id. The link
rules are those of docs/PROTOCOL.md §3: retransmit the identical frame
after the response timeout, at once on a NAK or a damaged frame naming the
request, after a short pause on BUSY; after an ACK, keep asking every
response timeout for up to the long timeout without spending retries.
When retransmissions run out, the request fails with LinkError and its
outcome is unknown — the caller must send it again with the same request id
(which is always safe) before treating it as lost.

Nothing runs before `start()` (or `async with`, or the first request): a client can be
made outside a running loop. After HELLO the client keeps no more requests in flight than
the device announced (`max_in_flight`), nor than it was configured with.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from device.errors import OutcomeUnknown
from device.pacing import bytes_per_second
from device.protocol import codec
from device.protocol.commands import (
    BAUD,
    BUSY_PAUSE,
    HOST_MAX_IN_FLIGHT,
    ISSUING,
    LONG_TIMEOUT,
    MAX_RETRIES,
    RESPONSE_TIMEOUT,
    Command,
)
from device.protocol.framing import MAX_BODY, Frame, FrameDecoder, FrameType, encode_frame
from device.protocol.status import DeviceError, Status
from device.transport import Port, at_memory_speed, open_serial

TICK = 0.02
HELLO: dict[str, Any] = {"versions": [1], "host": "taxctl"}
BULK_REQUESTS = frozenset({Command.FETCH, Command.ACK_SYNC, Command.EXPORT})
MAX_BUSY_WAITS = 200  # 10 s of BUSY at 50 ms before giving up


class LinkError(ConnectionError, OutcomeUnknown):
    """No answer from the device: port gone, or no response after every retransmission.

    For an issuing request the outcome is unknown; send it again with the
    same request id once the link is back.
    """


class NoAnswer(LinkError):
    """A request ran out of retransmissions.

    The sentence is for a person: a port on which nothing has ever answered (empty, wrong
    baud, printer off) gets what to check; the retry advice is kept only for an issuing
    request, which the device may have carried out.
    """

    def __init__(self, port: str, retries: int, *, heard: bool, issuing: bool) -> None:
        self.port, self.retries, self.heard, self.issuing = port, retries, heard, issuing
        if issuing:
            text = (
                f"no response from {port} after {retries} retransmissions; "
                "outcome unknown, retry with the same request id"
            )
        elif not heard:
            text = (
                f"nothing answers on {port}: check that the printer is switched on, its cable,"
                " the port path, and that the baud rate and parity match the printer's"
            )
        else:
            text = (
                f"{port} stopped answering after {retries} retransmissions: check the cable"
                " and the printer (the request was not one that issues)"
            )
        super().__init__(text)


class UnreadableResponse(LinkError):
    """A response frame arrived intact (its CRC holds) but its body cannot be read.

    The device may have done the work: this is "outcome unknown", never a
    refusal, so that an issuing request is sent again with the same request id.
    """


@dataclass
class ClientStats:
    requests: int = 0
    responses: int = 0
    retransmissions: int = 0
    timeouts: int = 0
    naks: int = 0
    busy: int = 0
    acks: int = 0
    damaged_frames: int = 0
    link_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _Pending:
    command: Command
    wire: bytes
    future: asyncio.Future[Frame]
    deadline: float
    retries: int = 0
    busy_waits: int = 0
    acked_until: float = 0.0  # the device is working on it: polls until then are free


class _Slots:
    """A semaphore whose size can shrink after HELLO (asyncio.Semaphore's cannot).

    Waiters are woken in arrival order; nothing here needs a loop until someone waits."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> None:
        while self.used >= self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                self._wake()  # cancelled, perhaps just after a wake-up: pass it on
                raise
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
        self.used += 1

    def release(self) -> None:
        self.used -= 1
        self._wake()

    def set_limit(self, limit: int) -> None:
        self.limit = limit
        self._wake()

    def _wake(self) -> None:
        free = self.limit - self.used
        for waiter in self._waiters:
            if free <= 0:
                break
            if not waiter.done():
                waiter.set_result(None)
                free -= 1


class DeviceClient:
    def __init__(
        self,
        port: Port,
        *,
        response_timeout: float = RESPONSE_TIMEOUT,
        max_retries: int = MAX_RETRIES,
        max_in_flight: int = HOST_MAX_IN_FLIGHT,
        on_link_error: Callable[[LinkError], None] | None = None,
        line_rate: float | None = None,
    ) -> None:
        self.port = port
        # Bytes/s of a physical line (None: a pty, memory speed): the time the line spends
        # carrying bytes to us does not count against a response timeout.
        self.line_rate = line_rate
        self.response_timeout = response_timeout
        self.max_retries = max_retries
        # told of every request that fails with a LinkError (its owner checks the link at
        # once), so that no caller has to remember to
        self._on_link_error = on_link_error
        self.stats = ClientStats()
        self._decoder = FrameDecoder()
        self._pending: dict[int, _Pending] = {}
        self.configured_in_flight = max_in_flight
        self._slots = _Slots(max_in_flight)
        self._prefix = int.from_bytes(os.urandom(4), "big") << 32
        self._sequence = 0
        self._closed: Exception | None = None
        self._heard = False  # a frame, even a damaged one, came back on this link
        self._reader: asyncio.Task[None] | None = None
        self._timer: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start reading the port (needs a running loop); idempotent."""
        if self._reader is None and self._closed is None:
            self._reader = asyncio.create_task(self._read_loop())
            self._timer = asyncio.create_task(self._timer_loop())

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def max_in_flight(self) -> int:
        """Requests kept outstanding at most: the configured number, or fewer if the
        device's HELLO announced fewer."""
        return self._slots.limit

    @classmethod
    async def open(
        cls,
        port: str,
        *,
        baud: int = BAUD,
        parity: str = "N",
        stopbits: float = 1,
        rtscts: bool = False,
        response_timeout: float = RESPONSE_TIMEOUT,
        max_retries: int = MAX_RETRIES,
        max_in_flight: int = HOST_MAX_IN_FLIGHT,
        on_link_error: Callable[[LinkError], None] | None = None,
        pace: bool = False,
    ) -> DeviceClient:
        opened = open_serial(
            port, baud=baud, parity=parity, stopbits=stopbits, rtscts=rtscts, pace=pace
        )
        client = cls(
            opened,
            response_timeout=response_timeout,
            max_retries=max_retries,
            max_in_flight=max_in_flight,
            on_link_error=on_link_error,
            line_rate=None
            if at_memory_speed(port, pace=pace)
            else bytes_per_second(baud, parity, stopbits),
        )
        client.start()
        return client

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def new_request_id(self) -> int:
        self._sequence = (self._sequence + 1) & 0xFFFFFFFF
        return self._prefix | self._sequence

    async def close(self) -> None:
        self._fail_all(LinkError("client closed"))
        for task in (self._reader, self._timer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self.port.close()

    # --- requests ------------------------------------------------------------------------

    async def request(
        self, command: Command, body: dict[str, Any] | None = None, *, request_id: int | None = None
    ) -> dict[str, Any]:
        try:
            if self._closed is not None:
                raise LinkError(f"link to {self.port.name} is down: {self._closed}")
            self.start()
            rid = request_id if request_id is not None else self.new_request_id()
            pending = self._pending.get(rid)
            if pending is not None:  # the same request is already on its way: share its answer
                frame = await asyncio.shield(pending.future)
            else:
                await self._slots.acquire()
                try:
                    frame = await self._send_and_wait(rid, command, body)
                finally:
                    self._slots.release()
            return self._result(frame)
        except LinkError as exc:
            if self._on_link_error is not None:
                self._on_link_error(exc)
            raise

    async def _send_and_wait(
        self, rid: int, command: Command, body: dict[str, Any] | None
    ) -> Frame:
        encoded = codec.encode(body if body else {})
        if len(encoded) > MAX_BODY:
            # Refused here, before anything is sent: no frame can carry it, so the device
            # never sees it and nothing is done (a refusal, not an unknown outcome).
            raise DeviceError(
                Status.BODY_TOO_LARGE,
                f"the request body is {len(encoded)} bytes; a frame carries at most {MAX_BODY}",
            )
        wire = encode_frame(Frame(FrameType.REQUEST, rid, int(command), 0, encoded))
        loop = asyncio.get_running_loop()
        pending = _Pending(command, wire, loop.create_future(), self._deadline())
        self._pending[rid] = pending
        self.stats.requests += 1
        self._write(command, wire)
        try:
            return await asyncio.shield(pending.future)
        finally:
            if self._pending.get(rid) is pending:
                del self._pending[rid]

    @staticmethod
    def _result(frame: Frame) -> dict[str, Any]:
        """The body of an OK response; DeviceError for a refusal.

        The status byte decides first: a refusal whose detail cannot be read is still a
        refusal (nothing was done), but an OK whose body cannot be read is not a refusal —
        the device may have issued a document — so it is UnreadableResponse.
        """
        try:
            body = codec.decode(frame.body) if frame.body else {}
        except codec.CodecError as exc:
            if frame.status != Status.OK:
                unread = {"detail": "the rest of the answer could not be read"}
                raise DeviceError.from_response(frame.status, unread) from None
            raise UnreadableResponse(
                f"the device's answer to request {frame.request_id:#x} cannot be read ({exc}); "
                "its outcome is unknown"
            ) from None
        if frame.status != Status.OK:
            raise DeviceError.from_response(frame.status, body)
        if not isinstance(body, dict):
            raise UnreadableResponse(
                f"the device's answer to request {frame.request_id:#x} is not a map; "
                "its outcome is unknown"
            )
        return body

    # --- link machinery ------------------------------------------------------------------

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self.port.read()
                if not data:
                    raise LinkError(f"port {self.port.name} closed")
                for event in self._decoder.feed(data):
                    self._heard = True
                    if isinstance(event, Frame):
                        self._on_frame(event)
                    else:
                        self.stats.damaged_frames += 1
                        self._on_damaged(event.request_id)
        except LinkError as exc:
            self._fail_all(exc)
        except Exception as exc:  # the port broke in a way we did not foresee
            self._fail_all(LinkError(f"port {self.port.name} failed: {exc}"))

    def _on_frame(self, frame: Frame) -> None:
        pending = self._pending.get(frame.request_id)
        if pending is None:
            return  # a late duplicate response, or a NAK/ACK for something already answered
        now = time.monotonic()
        if frame.type == FrameType.RESPONSE:
            self.stats.responses += 1
            if not pending.future.done():
                pending.future.set_result(frame)
        elif frame.type == FrameType.ACK:
            self.stats.acks += 1
            # Ask again after the usual timeout (a lost response then costs 1 s, not 10):
            # the device answers a repeat of a request it is still working on with an ACK.
            pending.acked_until = now + LONG_TIMEOUT
            pending.deadline = now + self.response_timeout
        elif frame.type == FrameType.BUSY:
            self.stats.busy += 1
            pending.busy_waits += 1
            if pending.busy_waits > MAX_BUSY_WAITS:
                self._fail(frame.request_id, pending, LinkError("device stayed busy"))
            else:
                pending.deadline = now + BUSY_PAUSE
                pending.retries -= 1  # the retransmission after BUSY is not a retry
        elif frame.type == FrameType.NAK:
            self.stats.naks += 1
            self._retransmit(frame.request_id, pending, now)

    def _on_damaged(self, request_id: int | None) -> None:
        """A damaged frame whose header names an outstanding request is most likely its
        response, lost: ask again now rather than after the timeout."""
        if request_id is None:
            return
        pending = self._pending.get(request_id)
        if pending is not None:
            self._retransmit(request_id, pending, time.monotonic())

    async def _timer_loop(self) -> None:
        seen = 0
        while True:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            # A frame still arriving, bytes since the last tick: the line is busy carrying an
            # answer (on a slow line one takes about a second), so nothing is late yet, and a
            # retransmission would only queue another answer behind it.
            arriving = self._decoder.pending > 0 and self._decoder.bytes_in != seen
            # On a physical line, answers queue behind each other: a deadline counts only
            # the time the line was not busy bringing us bytes (on a 9,600 baud line ten
            # queued answers take ten seconds, and none of them is lost).
            carried = (self._decoder.bytes_in - seen) / self.line_rate if self.line_rate else 0.0
            seen = self._decoder.bytes_in
            for rid, pending in list(self._pending.items()):
                pending.deadline += carried
                if arriving and now >= pending.deadline:
                    pending.deadline = now + TICK
                elif not pending.future.done() and now >= pending.deadline:
                    self.stats.timeouts += 1
                    if now < pending.acked_until:
                        pending.retries -= 1  # polling a request the device acknowledged
                    self._retransmit(rid, pending, now)

    def _retransmit(self, rid: int, pending: _Pending, now: float) -> None:
        if pending.future.done():
            return
        if pending.retries >= self.max_retries:
            self._fail(
                rid,
                pending,
                NoAnswer(
                    self.port.name,
                    self.max_retries,
                    heard=self._heard,
                    issuing=pending.command in ISSUING,
                ),
            )
            return
        pending.retries += 1
        self.stats.retransmissions += 1
        pending.deadline = self._deadline()
        self._write(pending.command, pending.wire)

    def _deadline(self) -> float:
        """The response timeout counts from when a request can be on the wire: on a paced
        line, after what our own port still holds ahead of it."""
        queued = getattr(self.port, "queued_seconds", None)
        return time.monotonic() + self.response_timeout + (queued() if queued else 0.0)

    def _write(self, command: Command, wire: bytes) -> None:
        """Sync's requests (FETCH, receipts) wait on a paced line while a sale's goes first."""
        bulk = getattr(self.port, "write_bulk", None) if command in BULK_REQUESTS else None
        (bulk or self.port.write)(wire)

    def _fail(self, rid: int, pending: _Pending, error: LinkError) -> None:
        self.stats.link_errors += 1
        if not pending.future.done():
            pending.future.set_exception(error)
        self._pending.pop(rid, None)

    def _fail_all(self, error: LinkError) -> None:
        if self._closed is None:
            self._closed = error
        for rid, pending in list(self._pending.items()):
            self._fail(rid, pending, error)

    # --- commands ------------------------------------------------------------------------

    async def hello(self) -> dict[str, Any]:
        """The handshake; from its answer on, at most the announced `max_in_flight`."""
        answer = await self.request(Command.HELLO, HELLO)
        self.adapt(answer)
        return answer

    def adapt(self, hello: dict[str, Any]) -> None:
        """Keep no more in flight than a HELLO answer announced (nor than configured)."""
        announced = hello.get("max_in_flight")
        # Only a sane announcement narrows the window: 0, a negative or a non-integer
        # would stall every request, and a larger one never widens what we were given.
        if type(announced) is int and announced >= 1:
            self._slots.set_limit(min(self.configured_in_flight, announced))

    async def info(self) -> dict[str, Any]:
        return await self.request(Command.INFO)

    async def status(self) -> dict[str, Any]:
        return await self.request(Command.STATUS)

    async def issue(
        self, request: dict[str, Any], *, request_id: int | None = None
    ) -> dict[str, Any]:
        return await self.request(Command.ISSUE, request, request_id=request_id)

    async def credit(
        self, request: dict[str, Any], *, request_id: int | None = None
    ) -> dict[str, Any]:
        return await self.request(Command.CREDIT, request, request_id=request_id)

    async def x_report(self, *, request_id: int | None = None) -> dict[str, Any]:
        return await self.request(Command.X_REPORT, request_id=request_id)

    async def z_report(self, *, request_id: int | None = None) -> dict[str, Any]:
        return await self.request(Command.Z_REPORT, request_id=request_id)

    async def get_document(
        self, *, counter: int | None = None, code: str | None = None, number: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = (
            {"counter": counter} if counter is not None else {"code": code, "number": number}
        )
        return await self.request(Command.GET_DOCUMENT, body)

    async def fetch(
        self,
        from_counter: int | None = None,
        max_count: int | None = None,
        max_bytes: int | None = None,
    ) -> dict[str, Any]:
        body = {
            k: v
            for k, v in (("from", from_counter), ("max_count", max_count), ("max_bytes", max_bytes))
            if v is not None
        }
        return await self.request(Command.FETCH, body)

    async def ack_sync(
        self,
        receipts: list[dict[str, Any]],
        consortium: bytes | None = None,
        endorsements: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"receipts": receipts}
        if consortium is not None:
            body["consortium"] = consortium
        if endorsements is not None:
            body["endorsements"] = endorsements
        return await self.request(Command.ACK_SYNC, body)

    async def csr(self, taxpayer: dict[str, str]) -> dict[str, Any]:
        return await self.request(Command.CSR, {"taxpayer": taxpayer})

    async def load_cert(self, certificate: bytes) -> dict[str, Any]:
        return await self.request(Command.LOAD_CERT, {"certificate": certificate})

    async def load_segment(self, segment: bytes) -> dict[str, Any]:
        return await self.request(Command.LOAD_SEGMENT, {"segment": segment})

    async def segment_request(self, count: int) -> bytes:
        """A segment request for `count` numbers, signed by the device (for the chain)."""
        answer = await self.request(Command.SEGMENT_REQUEST, {"count": count})
        raw = answer.get("request")
        if not isinstance(raw, bytes):
            raise UnreadableResponse("SEGMENT_REQUEST answered without request bytes")
        return raw

    async def set_time(self, when: str) -> dict[str, Any]:
        return await self.request(Command.SET_TIME, {"time": when})

    async def export(
        self, from_counter: int, to_counter: int | None = None, max_bytes: int | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"from": from_counter}
        if to_counter is not None:
            body["to"] = to_counter
        if max_bytes is not None:
            body["max_bytes"] = max_bytes
        return await self.request(Command.EXPORT, body)

    async def control(
        self, *, paper_out: bool | None = None, cover_open: bool | None = None
    ) -> dict[str, Any]:
        body = {
            k: v for k, v in (("paper_out", paper_out), ("cover_open", cover_open)) if v is not None
        }
        return await self.request(Command.CONTROL, body)
