from __future__ import annotations

import sys
import threading
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from device.protocol import codec, taxid

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=30), children, max_size=6)
    ),
    max_leaves=30,
)


def _order_all(value: object) -> object:
    if isinstance(value, dict):
        return codec.ordered_map({k: _order_all(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_order_all(v) for v in value]
    return value


@given(values)
def test_ordered_encoding_equals_canonical(value: object) -> None:
    assert codec.encode_ordered(_order_all(value)) == codec.encode(value)


@given(values)
def test_encoders_give_what_a_fresh_cbor2_encoder_gives(value: object) -> None:
    ordered = _order_all(value)
    assert codec.encode(value) == cbor2.dumps(value, canonical=True)
    assert codec.encode_ordered(ordered) == cbor2.dumps(ordered)


def test_a_failed_encode_leaves_nothing_behind() -> None:
    cyclic: list[Any] = [1]
    cyclic.append(cyclic)
    for bad in ({"a": object()}, [b"x" * 100, object()], cyclic):
        with pytest.raises(codec.CodecError):
            codec.encode(bad)
        with pytest.raises((cbor2.CBOREncodeError, TypeError, ValueError)):
            codec.encode_ordered(bad)
        assert codec.encode({"b": [1, 2], "a": "x"}) == bytes.fromhex("a2616161786162820102")
        assert codec.encode_ordered([1]) == b"\x81\x01"


def test_threads_encoding_at_once_each_get_their_own_bytes() -> None:
    failures: list[int] = []

    def encode_many(n: int) -> None:
        value = {"thread": n, "blob": bytes([n]) * (100 * n), "items": list(range(n))}
        expected = cbor2.dumps(value, canonical=True)
        for _ in range(2000):
            if codec.encode(value) != expected or codec.encode_ordered(n) != cbor2.dumps(n):
                failures.append(n)
                return

    threads = [threading.Thread(target=encode_many, args=(n,)) for n in range(1, 5)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, mid-encode included
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        sys.setswitchinterval(interval)
    assert not failures and not any(thread.is_alive() for thread in threads)


@given(values)
def test_canonical_round_trip(value: object) -> None:
    data = codec.encode(value)
    assert codec.decode_canonical(data) == value


def test_trailing_bytes_refused() -> None:
    with pytest.raises(codec.CodecError, match="trailing"):
        codec.decode(codec.encode(1) + b"\x00")


def test_non_canonical_refused() -> None:
    # {"b": 1, "a": 2} with keys out of order, and a non-shortest integer.
    with pytest.raises(codec.CodecError, match="deterministic"):
        codec.decode_canonical(bytes.fromhex("a2616201616102"))
    with pytest.raises(codec.CodecError, match="deterministic"):
        codec.decode_canonical(bytes.fromhex("1800"))


def test_garbage_refused() -> None:
    for junk in (b"", b"\xff", b"\xf7", b"\x5f\x41", b"\xa1"):
        for decode in (codec.decode, codec.decode_canonical):
            with pytest.raises(codec.CodecError):
                decode(junk)


def test_canonical_refuses_trailing_bytes() -> None:
    # The item itself is canonical; only the byte after it is wrong.
    for extra in (b"\x00", b"\xff", codec.encode({"a": 1})):
        with pytest.raises(codec.CodecError):
            codec.decode_canonical(codec.encode({"a": 1}) + extra)


def test_spec_example_tax_id_is_valid() -> None:
    assert taxid.is_valid("91350100M000100Y43")


@pytest.mark.parametrize(
    ("code", "why"),
    [
        ("91350100M000100Y44", "check character"),
        ("91350100M000100Y4", "18 characters"),
        ("91350100M000100I43", "not allowed"),
        (12345, "string"),
    ],
)
def test_bad_tax_ids_say_why(code: object, why: str) -> None:
    problem = taxid.problem(code)
    assert problem is not None and why in problem


@given(st.text(alphabet=taxid.ALPHABET, min_size=17, max_size=17))
def test_made_codes_validate_and_any_single_change_is_caught(first17: str) -> None:
    code = taxid.make(first17)
    assert taxid.is_valid(code)
    for i in range(17):
        for c in taxid.ALPHABET[:5]:
            if c != code[i]:
                assert not taxid.is_valid(code[:i] + c + code[i + 1 :])
