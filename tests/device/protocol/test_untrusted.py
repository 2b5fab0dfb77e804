"""The decoding policy for untrusted input: bombs refused from the bytes, bounds, quoting."""

from __future__ import annotations

import json
import time
import tracemalloc

import cbor2
import pytest

from device.protocol import codec
from device.protocol.untrusted import (
    CBOR_BODY,
    COSE,
    InputRefused,
    check_cbor,
    loads_json,
    shown,
)


def sharing_bomb(levels: int) -> bytes:
    """CBOR value sharing (tags 28/29): each level doubles the value a naive walk sees."""
    value: list[object] = ["x" * 8]
    for _ in range(levels):
        value = [value, value]
    return bytes(cbor2.dumps(value, value_sharing=True))


def test_sharing_bomb_is_refused_before_any_value_exists() -> None:
    bomb = sharing_bomb(60)  # 2**60 leaves if expanded
    assert len(bomb) < 500
    tracemalloc.start()
    started = time.monotonic()
    with pytest.raises(codec.CodecError, match="tag 28"):
        codec.decode(bomb)
    with pytest.raises(codec.CodecError, match="tag 28"):
        codec.decode_canonical(bomb)
    elapsed = time.monotonic() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 0.5
    assert peak < 1_000_000


@pytest.mark.parametrize(
    ("tag", "content"),
    [
        (0, "2026-01-01T00:00:00Z"),
        (1, 0),
        (2, b"\x01" * 64),
        (4, [-1, 5]),
        (30, [1, 3]),
        (35, "(a+)+$"),
        (258, [1]),
        (29, 0),
        (55799, 0),
        (18, []),
    ],
)
def test_every_tag_is_refused_unless_the_format_defines_it(tag: int, content: object) -> None:
    raw = bytes(cbor2.dumps(cbor2.CBORTag(tag, content)))
    with pytest.raises(InputRefused, match=f"tag {tag} "):
        check_cbor(raw)


def test_cose_allows_tag_18_and_integer_labels_only() -> None:
    check_cbor(bytes(cbor2.dumps(cbor2.CBORTag(18, [b"", {4: b"k"}, b"", b""]))), COSE)
    with pytest.raises(InputRefused, match="tag 28"):
        check_cbor(bytes(cbor2.dumps(cbor2.CBORTag(28, [1]))), COSE)
    with pytest.raises(InputRefused, match="not a text string"):
        check_cbor(bytes(cbor2.dumps({4: b"k"})), CBOR_BODY)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"\x81" * 17 + b"\x00", "nested deeper than 16"),
        (b"\x9b" + b"\xff" * 8, "larger than allowed"),
        (b"\x82\x01", "larger than allowed"),
        (b"\x5a\xff\xff\xff\xff", "runs past the end"),
        (b"\xf9\x7e\x00", "floating-point"),  # NaN
        (b"\xf7", "simple value"),  # undefined
        (b"\xf8\x20", "simple value"),
        (b"\xff", "break outside"),
        (b"\xbf\x61a\xff", "ends after a key"),
        (b"\xa1\x81\x01\x01", "not a text string"),
        (b"\xa1\xf6\x01", "not a text string"),
        (b"\x1c", "reserved"),
        (b"", "ends inside"),
    ],
)
def test_bounds_and_shapes(raw: bytes, why: str) -> None:
    with pytest.raises(InputRefused, match=why):
        check_cbor(raw)


def test_too_many_items_in_indefinite_containers() -> None:
    raw = b"\x9f" + b"\x00" * 30_000 + b"\xff"
    with pytest.raises(InputRefused, match="more than 20000"):
        check_cbor(raw)
    check_cbor(raw, CBOR_BODY.allowing(max_items=40_000))


@pytest.mark.parametrize(
    "value",
    [
        0,
        -1,
        2**64 - 1,
        -(2**64),
        "",
        "中文",
        b"\x00" * 100,
        [],
        {},
        [None, True, False],
        {"a": [1, {"b": b"x"}]},
        {"k": "v" * 70_000},
    ],
)
def test_plain_values_pass_and_decode_as_before(value: object) -> None:
    raw = bytes(cbor2.dumps(value, canonical=True))
    check_cbor(raw)
    assert codec.decode(raw) == value


def test_indefinite_lengths_are_decoded() -> None:
    assert codec.decode(b"\x9f\x01\x02\xff") == [1, 2]
    assert codec.decode(b"\xbf\x61a\x01\xff") == {"a": 1}
    assert codec.decode(b"\x5f\x42ab\x41c\xff") == b"abc"
    assert codec.decode(b"\x7f\x62ab\x61c\xff") == "abc"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("[" * 100_000 + "]" * 100_000, "JSON separators"),
        ("[" * 20_000 + "]" * 20_000, "nested deeper"),
        ("[" * 17 + "]" * 17, "nested deeper than 16"),
        ('{"a": NaN}', "NaN is not a JSON number"),
        ("[Infinity]", "Infinity is not a JSON number"),
        ('"\\ud800"', "lone surrogate"),
        ('{"\\udfff": 1}', "lone surrogate"),
        ("1" * 5000, "not valid JSON"),
        ("[1.5]", "floating-point"),
        ("{", "not valid JSON"),
    ],
    ids=lambda value: str(value)[:24],
)
def test_json_bounds(text: str, why: str) -> None:
    with pytest.raises(InputRefused, match=why):
        loads_json(text.encode())


def test_json_plain_value_passes() -> None:
    body = {"items": [{"name": "茶", "quantity": "1.5"}], "buyer": None}
    assert loads_json(json.dumps(body).encode()) == body


def test_shown_is_bounded_and_visible() -> None:
    assert shown("\x00" * 100_000) == '"' + "\\x00" * 40 + '…"'
    assert shown("a\u202eb\u2028c\u0085d\u200be") == '"a\\u202eb\\u2028c\\x85d\\u200be"'
    assert shown("中文") == '"中文"'
    assert shown(10**5000) == "an integer of 16610 bits"
    assert shown(b"x" * 10**6) == "1000000 bytes"
    assert shown([1] * 10**6) == "a list of 1000000 items"
    assert shown(12) == "12"
    assert len(shown("y" * 10**6)) < 50


def test_a_json_flood_is_refused_before_it_is_parsed() -> None:
    flood = b"[" + b"[]," * 10_000_000 + b"[]]"  # 30 MB: json.loads alone would take 1.4 GB
    tracemalloc.start()
    with pytest.raises(InputRefused, match="JSON separators"):
        loads_json(flood)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1_000_000
    # Punctuation inside strings is allowed for, up to four times the item bound.
    loads_json(json.dumps({"reason": "," * 50_000}).encode())


def test_decode_canonical_keeps_no_memory_for_hostile_map_keys() -> None:
    """Its key-order cache was keyed by each map's keys, whatever their size: 4096 LOAD_CERT
    frames (or chain documents) with one unique 60 kB key each, checked before any signature,
    kept 240 MB for the life of the process."""
    codec._KEYS_OK.clear()
    tracemalloc.start()
    try:
        for index in range(300):
            key = f"{index:08d}" + "k" * 60_000
            assert codec.decode_canonical(codec.encode({key: 1, "z" * 70_000: 2})) is not None
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 300 inputs of 130 kB: nothing of them may stay behind once decoded
    assert kept < 2_000_000, f"{kept} bytes kept after decoding"
    # ordinary key sets are still remembered where the full checks run (that is what the
    # cache is for): integer keys, say, which decode_canonical's one pass leaves to them
    codec.decode_canonical(codec.encode({1: -8, 4: b"kid"}), COSE)
    assert (1, 4) in codec._KEYS_OK
