from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device.protocol import crc, framing
from device.protocol.framing import (
    FLAG,
    Frame,
    FrameDecoder,
    FrameError,
    FrameType,
    NakReason,
    encode_frame,
)
from tests.statements import covers

frames = st.builds(
    Frame,
    type=st.sampled_from(list(FrameType)),
    request_id=st.integers(0, 2**64 - 1),
    command=st.integers(0, 255),
    status=st.integers(0, 255),
    body=st.binary(max_size=2048),
)


def test_crc_catalogue_check_value() -> None:
    assert crc.NAME == "CRC-32/ISO-HDLC"
    assert crc.crc32(crc.CHECK_INPUT) == crc.CHECK_VALUE == 0xCBF43926


def test_crc_residue_over_content_with_fcs() -> None:
    # Appending the FCS least significant byte first leaves the catalogue residue.
    content = framing.encode_content(Frame(FrameType.REQUEST, 7, 2))
    assert (crc.crc32(content) ^ 0xFFFFFFFF) == 0xDEBB20E3


@given(frames)
def test_any_frame_round_trips(frame: Frame) -> None:
    wire = encode_frame(frame)
    assert wire[0] == FLAG and wire[-1] == FLAG
    assert FLAG not in wire[1:-1]
    assert framing.decode_frame(wire) == frame


@given(frames, st.binary(max_size=300))
def test_garbage_before_a_frame_is_skipped(frame: Frame, garbage: bytes) -> None:
    decoder = FrameDecoder()
    events = decoder.feed(garbage + encode_frame(frame))
    good = [e for e in events if isinstance(e, Frame)]
    assert good[-1] == frame
    # Garbage may by chance contain whole valid frames only if it contains
    # flags and a matching FCS; it can never eat the real frame.
    assert events[-1] == frame
    assert decoder.pending == 0


@given(frames, frames, st.integers(min_value=1))
def test_cut_off_frame_is_closed_by_the_next(first: Frame, second: Frame, cut: int) -> None:
    wire = encode_frame(first)
    cut_at = 1 + cut % (len(wire) - 2)  # keep the opening flag, lose the tail
    events = FrameDecoder().feed(wire[:cut_at] + encode_frame(second))
    assert events[-1] == second
    assert all(isinstance(e, FrameError) for e in events[:-1])


@settings(max_examples=60)
@given(frames.filter(lambda f: len(f.body) <= 256))
def test_every_single_bit_error_is_detected(frame: Frame) -> None:
    wire = encode_frame(frame)
    for index in range(1, len(wire) - 1):
        for bit in range(8):
            damaged = bytearray(wire)
            damaged[index] ^= 1 << bit
            events = FrameDecoder().feed(bytes(damaged))
            assert frame not in events, (index, bit)
            assert not any(isinstance(e, Frame) for e in events), (index, bit)


@given(frames, st.data())
def test_every_truncation_is_detected(frame: Frame, data: st.DataObject) -> None:
    wire = encode_frame(frame)
    cut = data.draw(st.integers(1, len(wire) - 2))
    truncated = wire[:cut] + bytes([FLAG])
    events = FrameDecoder().feed(truncated)
    assert not any(isinstance(e, Frame) for e in events)


@given(frames, st.lists(st.integers(1, 64), max_size=40))
def test_byte_by_byte_delivery(frame: Frame, sizes: list[int]) -> None:
    wire = encode_frame(frame) * 2
    decoder = FrameDecoder()
    events: list[Frame | FrameError] = []
    pos = 0
    for size in sizes:
        events += decoder.feed(wire[pos : pos + size])
        pos += size
    events += decoder.feed(wire[pos:])
    assert events == [frame, frame]


def test_body_too_large_is_refused_by_encoder() -> None:
    big = Frame(FrameType.REQUEST, 1, 1, body=bytes(framing.MAX_BODY + 1))
    try:
        encode_frame(big)
    except ValueError as exc:
        assert "maximum" in str(exc)
    else:
        raise AssertionError("oversize body encoded")


def test_overlong_run_without_flag_is_dropped_and_decoder_recovers() -> None:
    decoder = FrameDecoder()
    events = decoder.feed(bytes([FLAG]) + b"\x01" * (framing.MAX_ESCAPED + 10))
    assert events == []
    assert decoder.pending == 0  # nothing buffered beyond the bound
    frame = Frame(FrameType.REQUEST, 9, 3)
    events = decoder.feed(encode_frame(frame))
    assert isinstance(events[0], FrameError) and events[0].reason == NakReason.TOO_LONG
    assert events[-1] == frame


def _escape_all(content: bytes, escaped: set[int]) -> bytes:
    """What another framer may send: `escaped` bytes as 0x7D x^0x20 besides 7E and 7D."""
    escaped = escaped - {FLAG ^ 0x20}  # 5E escaped would be 7D 7E: a flag, not a byte
    out = bytearray()
    for byte in content:
        if byte in escaped or byte in (FLAG, framing.ESCAPE):
            out += bytes([framing.ESCAPE, byte ^ 0x20])
        else:
            out.append(byte)
    return bytes([FLAG]) + bytes(out) + bytes([FLAG])


@covers("s-escape-decode")
def test_any_escaped_byte_decodes_as_rfc_1662_says() -> None:
    """A stock HDLC framer escapes control characters (async control character map):
    the old decoder NAKed every escape but 7D 5E / 7D 5D as an invalid escape."""
    frame = Frame(FrameType.REQUEST, 0x0011223344556677, 0x03, body=bytes(range(256)))
    content = framing.encode_content(frame)
    for escaped in (set(range(0x20)), set(range(256))):
        (event,) = FrameDecoder().feed(_escape_all(content, escaped))
        assert event == frame


@settings(max_examples=60)
@given(frames, st.sets(st.integers(0, 255)))
@covers("s-escape-decode")
def test_escaping_any_set_of_bytes_gives_the_same_frame(frame: Frame, escaped: set[int]) -> None:
    (event,) = FrameDecoder().feed(_escape_all(framing.encode_content(frame), escaped))
    assert event == frame


@covers("s-escape-encode")
def test_the_encoder_escapes_only_flag_and_escape() -> None:
    content = bytes(range(256)) * 2
    assert framing.escape(content) == content.replace(b"\x7d", b"\x7d\x5d").replace(
        b"\x7e", b"\x7d\x5e"
    )
    wire = encode_frame(Frame(FrameType.RESPONSE, 1, 2, body=bytes(range(256))))
    content = framing.encode_content(Frame(FrameType.RESPONSE, 1, 2, body=bytes(range(256))))
    assert wire.count(framing.ESCAPE) == content.count(b"\x7d") + content.count(b"\x7e")


@covers("s-escape-abort", "s-nak-id")
def test_an_escape_byte_before_the_closing_flag_is_an_invalid_escape_naming_the_header() -> None:
    content = framing.encode_content(Frame(FrameType.REQUEST, 0xABCD, 0x03))
    wire = bytes([FLAG]) + framing.escape(content) + bytes([framing.ESCAPE, FLAG])
    (event,) = FrameDecoder().feed(wire)
    assert event == FrameError(NakReason.BAD_ESCAPE, 0xABCD, len(content))
    assert framing.worth_nak(event)
    with pytest.raises(ValueError):
        framing.unescape(b"\x01\x7d")


@covers("s-nak-truncated", "s-nak-when")
def test_a_header_without_room_for_its_fcs_is_truncated_and_naked_with_its_id() -> None:
    """14 to 17 content bytes: the header is readable, the frame was cut. The old decoder
    gave these no id (so no NAK) and never produced reason 0x07 for anything it NAKed."""
    content = framing.encode_content(Frame(FrameType.REQUEST, 0x1122334455667788, 0x03))
    for size in range(framing.HEADER_SIZE, framing.HEADER_SIZE + framing.FCS_SIZE):
        (event,) = FrameDecoder().feed(encode_raw(content[:size]))
        assert event == FrameError(NakReason.TRUNCATED, 0x1122334455667788, size)
        assert framing.worth_nak(event)
    for size in range(1, framing.HEADER_SIZE):
        (event,) = FrameDecoder().feed(encode_raw(content[:size]))
        assert event == FrameError(NakReason.TRUNCATED, None, size)
        assert not framing.worth_nak(event)


def encode_raw(content: bytes) -> bytes:
    return bytes([FLAG]) + framing.escape(content) + bytes([FLAG])


@covers("s-size-limit", "s-nak-id")
def test_the_size_limit_counts_content_bytes_not_wire_bytes() -> None:
    """Content over 65553 bytes is TOO_LONG with its header's id, however it was escaped;
    the old decoder called it BAD_LENGTH unless the wire bytes passed twice the limit."""
    head = framing.HEADER.pack(1, FrameType.REQUEST, 0x77, 0x10, 0, 0xFFFF)
    over = head + bytes(framing.MAX_CONTENT + 1 - len(head))
    (event,) = FrameDecoder().feed(encode_raw(over))
    assert event == FrameError(NakReason.TOO_LONG, 0x77, framing.MAX_CONTENT + 1)
    # The largest frame, every body byte escaped: twice the limit on the wire, and valid.
    largest = Frame(FrameType.REQUEST, 0x78, 0x10, body=bytes([FLAG]) * framing.MAX_BODY)
    wire = encode_frame(largest)
    assert len(wire) > framing.MAX_CONTENT
    assert FrameDecoder().feed(wire) == [largest]


@covers("s-size-limit", "s-nak-id")
def test_an_over_long_frame_is_dropped_unbuffered_and_naked_with_its_header_id() -> None:
    """The old decoder dropped the header with the rest: its NAK carried id 0."""
    head = framing.HEADER.pack(1, FrameType.REQUEST, 0x7E7D000000000079, 0x10, 0, 0xFFFF)
    decoder = FrameDecoder()
    assert decoder.feed(bytes([FLAG]) + framing.escape(head)) == []
    for _ in range(3):
        assert decoder.feed(bytes([FLAG ^ 0x20]) * framing.MAX_CONTENT) == []
        assert decoder.pending <= framing.MAX_ESCAPED
    (error, frame) = decoder.feed(encode_frame(Frame(FrameType.REQUEST, 9, 3)))
    assert isinstance(error, FrameError)
    assert (error.reason, error.request_id) == (NakReason.TOO_LONG, 0x7E7D000000000079)
    assert frame == Frame(FrameType.REQUEST, 9, 3)
    assert decoder.pending == 0


def test_unknown_frame_type_is_refused_and_known_types_decode_to_their_member() -> None:
    for ftype in range(256):
        head = framing.HEADER.pack(framing.PROTOCOL_VERSION, ftype, 99, 0x10, 0, 0)
        wire = bytes([FLAG]) + framing.escape(head + crc.crc32(head).to_bytes(4, "little"))
        (event,) = FrameDecoder().feed(wire + bytes([FLAG]))
        if ftype in set(FrameType):
            assert isinstance(event, Frame) and event.type is FrameType(ftype)
        else:
            assert event == FrameError(NakReason.BAD_TYPE, 99, len(head) + 4)
