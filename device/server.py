"""The device's serial server: frames in, frames out, exactly once.

Reads whatever the port delivers, decodes frames, NAKs damaged ones, sends
BUSY past the in-flight limit and ACK for requests that take long. A
request id seen before gets its recorded response again (for issuing
commands from the journal, so this survives restarts); the same id with a
different request is refused. "The same request" is the same command and
the same body as a value: bodies are compared in their deterministic CBOR
form, so a host that re-encodes a request with its map keys in another order
still gets its answer. Reads are answered at once; writes go to the Writer
in arrival order.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from typing import Any

from device.firmware import Firmware, response_for_row
from device.handlers import READS, WRITES
from device.protocol import codec
from device.protocol.commands import ACK_AFTER, DEFAULT_MAX_IN_FLIGHT, ISSUING, Command
from device.protocol.framing import (
    Frame,
    FrameDecoder,
    FrameError,
    FrameType,
    encode_frame,
    worth_nak,
)
from device.protocol.status import DeviceError, Status, internal_error
from device.transport import Port
from device.writer import Writer, WriteRequest

log = logging.getLogger("taxctl.device")
BULK_ANSWERS = frozenset({Command.FETCH, Command.EXPORT})  # pages that may wait for a sale

RECENT_RESPONSES = 4096
# Recorded answers are bounded in bytes too: a FETCH or EXPORT answer is up to 60 kB, so
# 4096 of them would be 250 MB. Past this, the oldest go first (an issuing request's
# answer is still given again from the journal; a read is simply answered anew).
RECENT_BYTES = 16 * 1024 * 1024


_COMMANDS = {int(c): c for c in Command}


def request_digest(command: int, body: bytes) -> bytes:
    """What "the same request" means: the command and the body's canonical bytes."""
    return hashlib.sha256(bytes([command]) + body).digest()[:16]


@dataclass(slots=True)
class _Flight:
    """A request accepted and not yet answered."""

    digest: bytes
    command: int
    since: float
    acked: bool = False


@dataclass(frozen=True, slots=True)
class _Request:
    """A request frame as the server sees it: its body decoded (or why not) and its digest."""

    rid: int
    command: int
    known: Command | None
    body: Any
    refusal: DeviceError | None
    digest: bytes


def read_request(frame: Frame) -> _Request:
    """Decode the body once; the digest is over its deterministic CBOR (the bytes as sent
    when they are no CBOR, which can match no other request's canonical form)."""
    known = _COMMANDS.get(frame.command)
    refusal: DeviceError | None = None
    body: Any = None
    canonical = frame.body
    if known is None:
        refusal = DeviceError(Status.UNKNOWN_COMMAND, f"0x{frame.command:02x}")
    try:
        body = codec.decode(frame.body) if frame.body else {}
        canonical = codec.encode(body)
    except codec.CodecError as exc:
        refusal = refusal or DeviceError(Status.BAD_REQUEST, str(exc))
    digest = request_digest(frame.command, canonical)
    return _Request(frame.request_id, frame.command, known, body, refusal, digest)


class DeviceServer:
    def __init__(
        self, fw: Firmware, port: Port, *, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    ) -> None:
        self.fw = fw
        self.port = port
        fw.max_in_flight = max_in_flight
        self.writer = Writer(fw)
        self.decoder = FrameDecoder()
        self._in_flight: dict[int, _Flight] = {}
        self._recent: OrderedDict[int, tuple[bytes, bytes]] = OrderedDict()  # id -> (digest, frame)
        self._recent_bytes = 0  # the frames' total size in _recent

    @property
    def max_in_flight(self) -> int:
        return self.fw.max_in_flight  # the firmware's, as HELLO tells the host

    @max_in_flight.setter
    def max_in_flight(self, value: int) -> None:
        self.fw.max_in_flight = value

    async def serve(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set or the port closes; then finish every accepted write."""
        writer_task = asyncio.create_task(self.writer.run())
        ack_task = asyncio.create_task(self._ack_loop())
        reader_task = asyncio.create_task(self._read_loop())
        stopper = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait(
                {writer_task, reader_task, stopper}, return_when=asyncio.FIRST_COMPLETED
            )
            if writer_task in done:
                writer_task.result()  # the writer only returns after stop(): this raises
        finally:
            reader_task.cancel()
            stopper.cancel()
            await asyncio.gather(reader_task, stopper, return_exceptions=True)
            # No new requests now; everything already accepted is committed and answered.
            if not writer_task.done():
                self.writer.stop()
                await writer_task
            ack_task.cancel()
            await asyncio.gather(ack_task, return_exceptions=True)
            self.writer.close()

    async def _read_loop(self) -> None:
        while True:
            data = await self.port.read()
            if not data:
                log.info("port %s closed", self.port.name)
                return
            for event in self.decoder.feed(data):
                if isinstance(event, Frame):
                    if event.type == FrameType.REQUEST:
                        try:
                            self._on_request(event)
                        except Exception as exc:  # one bad request must not stop the device
                            log.exception("request 0x%x failed", event.request_id)
                            self._reply_uncached(
                                event.request_id, event.command, internal_error(exc)
                            )
                elif isinstance(event, FrameError):
                    self._nak(event)

    def _nak(self, error: FrameError) -> None:
        """NAK a damaged frame with the id its header claims; noise shorter than a header
        has none and gets no answer. The command byte is 0: a damaged one means nothing."""
        if worth_nak(error) and error.request_id is not None:
            self.fw.since_start.naks_sent += 1
            self._send(Frame(FrameType.NAK, error.request_id, 0, error.reason))

    async def _ack_loop(self) -> None:
        while True:
            await asyncio.sleep(ACK_AFTER / 2)
            now = time.monotonic()
            for request_id, flight in list(self._in_flight.items()):
                if not flight.acked and now - flight.since >= ACK_AFTER:
                    flight.acked = True
                    self._send(Frame(FrameType.ACK, request_id, flight.command))

    def _send(self, frame: Frame) -> bytes | None:
        """Encode and write one frame; None (and a log line) if that failed. Never raises:
        one frame that cannot be sent must not take the read loop or the writer with it."""
        try:
            wire = encode_frame(frame)
        except Exception:
            log.exception(
                "a %s frame for request 0x%x cannot be encoded", frame.type.name, frame.request_id
            )
            return None
        return wire if self._write(wire) else None

    def _write(self, wire: bytes, *, bulk: bool = False) -> bool:
        try:
            # On a paced line a sale's answer overtakes FETCH/EXPORT pages not yet on the wire.
            write = getattr(self.port, "write_bulk", None) if bulk else None
            (write or self.port.write)(wire)
        except Exception:
            log.exception("writing %d bytes to %s failed", len(wire), self.port.name)
            return False
        return True

    def _on_request(self, frame: Frame) -> None:
        request = read_request(frame)
        if self._answered_again(request):
            return
        rid, command = request.rid, request.command
        if len(self._in_flight) >= self.max_in_flight:
            self.fw.since_start.busy_sent += 1
            self._send(Frame(FrameType.BUSY, rid, command))
        elif request.refusal is not None:
            refusal = request.refusal
            self._reply(rid, command, request.digest, refusal.status, refusal.to_body())
        elif request.known in WRITES:
            self._submit(request)
        else:
            self._answer_read(request)

    def _submit(self, request: _Request) -> None:
        """Hand a write to the Writer; it answers through _reply once it is durable."""
        rid, command, digest, known = request.rid, request.command, request.digest, request.known
        assert known is not None
        self._in_flight[rid] = _Flight(digest, command, time.monotonic())
        reply = partial(self._reply, rid, command, digest)
        self.writer.submit(WriteRequest(known, request.body, rid, digest, reply))

    def _answered_again(self, request: _Request) -> bool:
        """A request id seen before: an ACK while it is worked on, its recorded response
        after, REQUEST_ID_REUSED if it was another request. False for a new id."""
        rid, command, digest = request.rid, request.command, request.digest
        flying = self._in_flight.get(rid)
        if flying is not None:
            if flying.digest == digest:
                self._send(Frame(FrameType.ACK, rid, command))  # still working on it
            else:
                self._reply_uncached(rid, command, DeviceError(Status.REQUEST_ID_REUSED))
            return True
        recent = self._recent.get(rid)
        if recent is not None:
            if recent[0] == digest:
                self.fw.since_start.replays += 1
                self._write(recent[1])
            else:
                self._reply_uncached(rid, command, DeviceError(Status.REQUEST_ID_REUSED))
            return True
        return (
            command in ISSUING
            and self.fw.maybe_issued(rid)
            and self._replay_from_journal(rid, command, digest)
        )

    def _answer_read(self, request: _Request) -> None:
        """Run a command that changes nothing durable and answer it at once."""
        rid, command, digest, known = request.rid, request.command, request.digest, request.known
        assert known is not None
        try:
            out = READS[known](self.fw, request.body)
        except DeviceError as exc:
            self._reply(rid, command, digest, exc.status, exc.to_body())
        except Exception as exc:
            log.exception("command %s failed", known.name)
            self._reply(rid, command, digest, Status.INTERNAL_ERROR, internal_error(exc).to_body())
        else:
            self._reply(rid, command, digest, Status.OK, out)

    def _replay_from_journal(self, rid: int, command: int, digest: bytes) -> bool:
        row = self.fw.journal.by_request(rid)
        if row is None:
            return False
        if row.request_digest != digest:
            self._reply_uncached(rid, command, DeviceError(Status.REQUEST_ID_REUSED))
        else:
            self.fw.since_start.replays += 1
            self._reply(rid, command, digest, Status.OK, response_for_row(row, self.fw.key))
        return True

    def _reply(
        self, rid: int, command: int, digest: bytes, status: int, body: dict[str, Any]
    ) -> None:
        self._in_flight.pop(rid, None)
        try:
            # A DocumentResponse is built in deterministic key order (firmware.document_response),
            # so the cheaper order-preserving encoder gives the canonical bytes.
            encoded = (
                codec.encode_ordered(body)
                if status == Status.OK and command in ISSUING
                else codec.encode(body)
            )
            wire = encode_frame(Frame(FrameType.RESPONSE, rid, command, status, encoded))
        except Exception as exc:  # a bug (an answer too large for a frame, say): say so, briefly
            log.exception(
                "the answer (status 0x%02x) to request 0x%x cannot be encoded", status, rid
            )
            # Not recorded: asked again, an issued document is answered from the journal.
            self._reply_uncached(rid, command, internal_error(exc))
            return
        if not self._write(wire, bulk=command in BULK_ANSWERS):
            return
        self._record(rid, digest, wire)

    def _record(self, rid: int, digest: bytes, wire: bytes) -> None:
        recent = self._recent
        old = recent.pop(rid, None)
        if old is not None:
            self._recent_bytes -= len(old[1])
        recent[rid] = (digest, wire)
        self._recent_bytes += len(wire)
        while len(recent) > RECENT_RESPONSES or self._recent_bytes > RECENT_BYTES:
            self._recent_bytes -= len(recent.popitem(last=False)[1][1])

    def _reply_uncached(self, rid: int, command: int, error: DeviceError) -> None:
        # Not recorded: the original request keeps its own response under this id.
        try:
            body = codec.encode(error.to_body())
        except Exception:
            log.exception("the refusal of request 0x%x cannot be encoded; dropped", rid)
            return
        self._send(Frame(FrameType.RESPONSE, rid, command, error.status, body))
