"""The device's serial server: frames in, frames out, exactly once.

Reads whatever the port delivers, decodes frames, NAKs damaged ones, sends
BUSY past the in-flight limit and ACK for requests that take long. A
request id seen before gets its recorded response again (for issuing
commands from the journal, so this survives restarts); the same id with a
different request is refused. Reads are answered at once; writes go to the
Writer in arrival order.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from functools import partial
from typing import Any

from device import views
from device.firmware import Firmware, response_for_row
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
WRITES = ISSUING | {Command.ACK_SYNC, Command.LOAD_CERT, Command.LOAD_SEGMENT, Command.SET_TIME}
READS = {
    Command.HELLO: None,  # needs max_in_flight; handled inline
    Command.INFO: views.info,
    Command.STATUS: views.status,
    Command.FETCH: views.fetch,
    Command.GET_DOCUMENT: views.get_document,
    Command.EXPORT: views.export,
    Command.CSR: views.csr,
    Command.SEGMENT_REQUEST: views.segment_request,
    Command.CONTROL: views.control,
}


_COMMANDS = {int(c): c for c in Command}


def request_digest(command: int, body: bytes) -> bytes:
    return hashlib.sha256(bytes([command]) + body).digest()[:16]


class DeviceServer:
    def __init__(
        self, fw: Firmware, port: Port, *, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    ) -> None:
        self.fw = fw
        self.port = port
        self.max_in_flight = max_in_flight
        self.writer = Writer(fw)
        self.decoder = FrameDecoder()
        self._in_flight: dict[int, tuple[bytes, float, bool]] = {}  # id -> (digest, since, acked)
        self._recent: OrderedDict[int, tuple[bytes, bytes]] = OrderedDict()  # id -> (digest, frame)
        self._recent_bytes = 0  # the frames' total size in _recent

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
                elif isinstance(event, FrameError) and worth_nak(event):
                    self.fw.run.naks_sent += 1
                    self._send(Frame(FrameType.NAK, event.request_id or 0, 0, event.reason))

    async def _ack_loop(self) -> None:
        while True:
            await asyncio.sleep(ACK_AFTER / 2)
            now = time.monotonic()
            for request_id, (digest, since, acked) in list(self._in_flight.items()):
                if not acked and now - since >= ACK_AFTER:
                    self._in_flight[request_id] = (digest, since, True)
                    self._send(Frame(FrameType.ACK, request_id, 0))

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
        rid, command = frame.request_id, frame.command
        digest = request_digest(command, frame.body)
        flying = self._in_flight.get(rid)
        if flying is not None:
            if flying[0] == digest:
                self._send(Frame(FrameType.ACK, rid, command))  # still working on it
            else:
                self._reply_uncached(rid, command, DeviceError(Status.REQUEST_ID_REUSED))
            return
        recent = self._recent.get(rid)
        if recent is not None:
            if recent[0] == digest:
                self.fw.run.replays += 1
                self._write(recent[1])
            else:
                self._reply_uncached(rid, command, DeviceError(Status.REQUEST_ID_REUSED))
            return
        if (
            command in ISSUING
            and self.fw.maybe_issued(rid)
            and self._replay_from_journal(rid, command, digest)
        ):
            return
        if len(self._in_flight) >= self.max_in_flight:
            self.fw.run.busy_sent += 1
            self._send(Frame(FrameType.BUSY, rid, command))
            return
        known = _COMMANDS.get(command)
        if known is None:
            self._reply(
                rid,
                command,
                digest,
                Status.UNKNOWN_COMMAND,
                DeviceError(Status.UNKNOWN_COMMAND, f"0x{command:02x}").to_body(),
            )
            return
        try:
            body = codec.decode(frame.body) if frame.body else {}
        except codec.CodecError as exc:
            self._reply(
                rid,
                command,
                digest,
                Status.BAD_REQUEST,
                DeviceError(Status.BAD_REQUEST, str(exc)).to_body(),
            )
            return
        if known in WRITES:
            self._in_flight[rid] = (digest, time.monotonic(), False)
            self.writer.submit(
                WriteRequest(known, body, rid, digest, partial(self._reply, rid, command, digest))
            )
            return
        try:
            if known == Command.HELLO:
                out = views.hello(self.fw, body, self.max_in_flight)
            else:
                handler = READS[known]
                assert handler is not None
                out = handler(self.fw, body)
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
            self.fw.run.replays += 1
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
