"""Byte framing for the serial link: HDLC-like flags and byte stuffing.

A frame on the wire is ``0x7E  escape(content)  0x7E``. Inside, every
0x7E is sent as 0x7D 0x5E and every 0x7D as 0x7D 0x5D (RFC 1662 §4.2), so a
flag byte only ever means "frame boundary". That is what makes the link
resynchronise by itself: garbage, a cut-off frame or a burst of noise is
closed by the next flag, fails its check, and the frame after it decodes.
A receiver takes any ``0x7D x`` as ``x ^ 0x20``, as every RFC 1662 receiver
does, so a peer whose framer also escapes control characters is understood;
the encoder escapes only the two bytes it must.

Content (before escaping), all integers big-endian except the FCS::

    offset size  field
    0      1     protocol version (1)
    1      1     frame type (FrameType)
    2      8     request id (chosen by the host, echoed by the device)
    10     1     command
    11     1     status (responses), reason (NAK), 0 otherwise
    12     2     body length n (at most MAX_BODY)
    14     n     body (CBOR)
    14+n   4     FCS: CRC-32/ISO-HDLC over bytes 0..14+n, least significant byte first

No I/O here: `encode_frame` returns bytes, `FrameDecoder.feed` takes bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum

from device.protocol.crc import crc32

FLAG = 0x7E
ESCAPE = 0x7D
PROTOCOL_VERSION = 1

HEADER = struct.Struct(">BBQBBH")
HEADER_SIZE = HEADER.size  # 14
FCS_SIZE = 4
MAX_BODY = 65535
MAX_CONTENT = HEADER_SIZE + MAX_BODY + FCS_SIZE  # the size limit: content bytes, unescaped
# Worst case every content byte is escaped: more wire bytes than this between two
# flags hold more than MAX_CONTENT content bytes, so the decoder stops buffering there.
MAX_ESCAPED = 2 * MAX_CONTENT
# Escaped bytes that always hold a whole header (14 pairs and a byte to spare): what an
# over-long frame keeps, so that its NAK can name the request its header claims.
HEAD_ESCAPED = 2 * HEADER_SIZE + 1

_FLAG_B = bytes([FLAG])
_ESC_B = bytes([ESCAPE])
_ESC_FLAG = bytes([ESCAPE, FLAG ^ 0x20])
_ESC_ESC = bytes([ESCAPE, ESCAPE ^ 0x20])


class FrameType(IntEnum):
    REQUEST = 0x01
    RESPONSE = 0x02
    ACK = 0x06  # request received and valid; the response will take longer than usual
    BUSY = 0x11  # request not accepted now (queue full); retransmit after a pause
    NAK = 0x15  # frame received damaged; retransmit


_FRAME_TYPES = {int(t): t for t in FrameType}


class NakReason(IntEnum):
    BAD_FCS = 0x01
    BAD_LENGTH = 0x02
    TOO_LONG = 0x03
    BAD_VERSION = 0x04
    BAD_TYPE = 0x05
    BAD_ESCAPE = 0x06
    TRUNCATED = 0x07


@dataclass(frozen=True, slots=True)
class Frame:
    type: FrameType
    request_id: int
    command: int
    status: int = 0
    body: bytes = b""
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class FrameError:
    """Bytes between two flags that are not a valid frame.

    `request_id` is what the damaged header claims (it may itself be
    damaged); it is None when fewer than a header's 14 content bytes arrived.
    `size` counts content bytes, or wire bytes for a frame past the buffer (MAX_ESCAPED).
    """

    reason: NakReason
    request_id: int | None
    size: int


def escape(content: bytes) -> bytes:
    return content.replace(_ESC_B, _ESC_ESC).replace(_FLAG_B, _ESC_FLAG)


def unescape(data: bytes) -> bytes:
    """The content of one frame: every ``0x7D x`` becomes ``x ^ 0x20`` (RFC 1662 §4.2).

    A trailing 0x7D escapes nothing (RFC 1662 calls 0x7D 0x7E an abort): ValueError.
    """
    content, dangling = _unescape(data)
    if dangling:
        raise ValueError("an escape byte ends the frame")
    return content


def _unescape(data: bytes) -> tuple[bytes, bool]:
    """The unescaped bytes, and whether a last 0x7D was left escaping nothing."""
    escapes = data.count(_ESC_B)
    if not escapes:
        return bytes(data), False
    if escapes == data.count(_ESC_FLAG) + data.count(_ESC_ESC):
        # What this encoder sends: the two pairs cannot overlap, so replace them (C speed).
        return data.replace(_ESC_FLAG, _FLAG_B).replace(_ESC_ESC, _ESC_B), False
    out = bytearray()
    start, size = 0, len(data)
    at = data.find(_ESC_B)
    while at >= 0:
        out += data[start:at]
        if at + 1 == size:
            return bytes(out), True
        out.append(data[at + 1] ^ 0x20)
        start = at + 2
        at = data.find(_ESC_B, start)
    out += data[start:]
    return bytes(out), False


def _header_id(content: bytes) -> int | None:
    """The request id a header claims; None with fewer than a header's bytes."""
    if len(content) < HEADER_SIZE:
        return None
    return int.from_bytes(content[2:10], "big")


def encode_content(frame: Frame) -> bytes:
    if len(frame.body) > MAX_BODY:
        raise ValueError(f"frame body is {len(frame.body)} bytes, the maximum is {MAX_BODY}")
    head = HEADER.pack(
        frame.version,
        frame.type,
        frame.request_id,
        frame.command,
        frame.status,
        len(frame.body),
    )
    content = head + frame.body
    return content + crc32(content).to_bytes(4, "little")


def encode_frame(frame: Frame) -> bytes:
    return _FLAG_B + escape(encode_content(frame)) + _FLAG_B


def decode_content(content: bytes) -> Frame | FrameError:
    """Check and parse one unescaped frame content."""
    size = len(content)
    if size < HEADER_SIZE + FCS_SIZE:
        # A readable header with no room for its FCS is a frame cut short; fewer bytes
        # than a header are line noise (the caller does not NAK those).
        return FrameError(NakReason.TRUNCATED, _header_id(content), size)
    version, ftype, request_id, command, status, length = HEADER.unpack_from(content)
    if size > MAX_CONTENT:
        return FrameError(NakReason.TOO_LONG, request_id, size)
    if HEADER_SIZE + length + FCS_SIZE != size:
        return FrameError(NakReason.BAD_LENGTH, request_id, size)
    if crc32(memoryview(content)[: size - FCS_SIZE]) != int.from_bytes(
        content[-FCS_SIZE:], "little"
    ):
        return FrameError(NakReason.BAD_FCS, request_id, size)
    if version != PROTOCOL_VERSION:
        return FrameError(NakReason.BAD_VERSION, request_id, size)
    frame_type = _FRAME_TYPES.get(ftype)  # a dict lookup: FrameType(ftype) costs 0.3 us a frame
    if frame_type is None:
        return FrameError(NakReason.BAD_TYPE, request_id, size)
    return Frame(
        frame_type,
        request_id,
        command,
        status,
        bytes(content[HEADER_SIZE : HEADER_SIZE + length]),
        version,
    )


def decode_frame(wire: bytes) -> Frame:
    """Decode exactly one complete wire frame (flags included); for tests and vectors."""
    decoder = FrameDecoder()
    events = decoder.feed(wire)
    if len(events) != 1 or not isinstance(events[0], Frame) or decoder.pending:
        raise ValueError(f"not exactly one valid frame: {events!r}")
    return events[0]


class FrameDecoder:
    """Incremental decoder: feed it whatever the port delivered.

    Returns, in order, every complete frame and every damaged one (as a
    FrameError) whose closing flag arrived. Empty gaps between flags are
    inter-frame fill and produce nothing. Garbage before a frame is closed
    by that frame's opening flag and comes out as one FrameError; the frame
    itself decodes. Which errors deserve a NAK is the peer's decision
    (see `worth_nak`).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._overflow = False
        self._head = b""  # the first escaped bytes of an over-long frame
        self._dropped = 0  # escaped bytes of an over-long frame seen so far
        self.frames = 0
        self.errors = 0
        self.bytes_in = 0

    @property
    def pending(self) -> int:
        """Bytes held waiting for a closing flag."""
        return len(self._buf)

    def reset(self) -> None:
        self._buf.clear()
        self._overflow = False
        self._head = b""
        self._dropped = 0

    def feed(self, data: bytes) -> list[Frame | FrameError]:
        self.bytes_in += len(data)
        return list(self._scan(data))

    def _scan(self, data: bytes) -> Iterator[Frame | FrameError]:
        start = 0
        while True:
            end = data.find(_FLAG_B, start)
            if end < 0:
                self._hold(data[start:])
                return
            chunk = data[start:end]
            start = end + 1
            if self._overflow or len(self._buf) + len(chunk) > MAX_ESCAPED:
                self._hold(chunk)  # starts (or continues) the over-long frame
                event: Frame | FrameError = self._too_long()
            elif self._buf:
                self._buf += chunk
                candidate = bytes(self._buf)
                self._buf.clear()
                event = self._decode(candidate)
            elif chunk:
                event = self._decode(chunk)
            else:
                continue  # inter-frame fill
            if isinstance(event, Frame):
                self.frames += 1
            else:
                self.errors += 1
            yield event

    def _hold(self, rest: bytes) -> None:
        if not self._overflow and len(self._buf) + len(rest) <= MAX_ESCAPED:
            self._buf += rest
            return
        if not self._overflow:  # keep the header's bytes, drop the rest unbuffered
            self._head = bytes(self._buf[:HEAD_ESCAPED]) + rest[:HEAD_ESCAPED]
            self._dropped = len(self._buf)
            self._buf.clear()
            self._overflow = True
        self._dropped += len(rest)

    def _too_long(self) -> FrameError:
        content, _ = _unescape(self._head[:HEAD_ESCAPED])
        error = FrameError(NakReason.TOO_LONG, _header_id(content), self._dropped)
        self.reset()
        return error

    @staticmethod
    def _decode(candidate: bytes) -> Frame | FrameError:
        content, dangling = _unescape(candidate)
        if dangling:
            return FrameError(NakReason.BAD_ESCAPE, _header_id(content), len(content))
        return decode_content(content)


def worth_nak(error: FrameError) -> bool:
    """Whether a damaged frame looks like a request that was sent and hurt: its header
    (14 content bytes) arrived, so there is a request id to NAK.

    Shorter line noise between frames is not answered: NAKing every burst
    would double the noise on an already noisy line.
    """
    return error.request_id is not None
