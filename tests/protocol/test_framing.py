from __future__ import annotations

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


def test_bad_escape_is_refused() -> None:
    wire = bytes([FLAG]) + bytes([framing.ESCAPE, 0x41]) + bytes(20) + bytes([FLAG])
    (event,) = FrameDecoder().feed(wire)
    assert isinstance(event, FrameError) and event.reason == NakReason.BAD_ESCAPE


def test_worth_nak_ignores_short_noise() -> None:
    assert not framing.worth_nak(FrameError(NakReason.TRUNCATED, None, 3))
    assert framing.worth_nak(FrameError(NakReason.BAD_FCS, 5, 40))


def test_unknown_frame_type_is_refused_and_known_types_decode_to_their_member() -> None:
    for ftype in range(256):
        head = framing.HEADER.pack(framing.PROTOCOL_VERSION, ftype, 99, 0x10, 0, 0)
        wire = bytes([FLAG]) + framing.escape(head + crc.crc32(head).to_bytes(4, "little"))
        (event,) = FrameDecoder().feed(wire + bytes([FLAG]))
        if ftype in set(FrameType):
            assert isinstance(event, Frame) and event.type is FrameType(ftype)
        else:
            assert event == FrameError(NakReason.BAD_TYPE, 99, len(head) + 4)
