"""decode_canonical's one pass accepts exactly what the decoding policy, cbor2 and the
re-encoding comparison accept, and builds the same value (types included); the rest
gets the same refusal, on documents' payloads and on hostile CBOR."""

from __future__ import annotations

import random
import tracemalloc
from typing import Any

import cbor2
import pytest

from device.protocol import codec, cose
from device.protocol.framing import decode_frame
from device.protocol.untrusted import COSE, Limits
from tests.vectors.generate import generate


def outcome(raw: bytes, limits: Limits) -> object:
    try:
        return ("value", tagged(codec.decode_canonical(raw, limits)))
    except codec.CodecError as exc:
        return ("refused", str(exc))


def full_checks(raw: bytes, limits: Limits, monkeypatch: pytest.MonkeyPatch) -> object:
    def irregular(raw: bytes, limits: Limits) -> Any:
        raise codec._Irregular

    with monkeypatch.context() as patch:
        patch.setattr(codec, "_decode_deterministic", irregular)
        return outcome(raw, limits)


def tagged(value: Any) -> Any:
    """`value` with every part's type beside it (True and 1 are equal, not the same)."""
    if isinstance(value, dict):
        return ("map", [(tagged(k), tagged(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [tagged(v) for v in value])
    if isinstance(value, cbor2.CBORTag):
        return ("tag", value.tag, tagged(value.value))
    return (type(value).__name__, value)


def payloads() -> list[bytes]:
    """The payloads of the documents in the protocol's test vectors."""
    out = []
    for vector in generate()["vectors"]:
        try:
            body = codec.decode(decode_frame(bytes.fromhex(vector["hex"])).body)
        except (codec.CodecError, ValueError):
            continue
        for value in body.values() if isinstance(body, dict) else ():
            for raw in value if isinstance(value, list) else [value]:
                if isinstance(raw, bytes) and raw[:1] == b"\xd2":
                    out.append(cose.decode_sign1(raw).payload)
    return out


def random_value(rnd: random.Random, depth: int = 0) -> Any:
    kind = rnd.randrange(9 if depth < 5 else 6)
    if kind == 0:
        return rnd.choice((0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1))
    if kind == 1:
        return -1 - rnd.choice((0, 23, 24, 255, 256, 2**32, 2**64 - 1))
    if kind == 2:
        return bytes(rnd.randrange(256) for _ in range(rnd.choice((0, 1, 23, 24, 300))))
    if kind == 3:
        return "".join(rnd.choice("ab贸😀\x00") for _ in range(rnd.choice((0, 1, 5, 30))))
    if kind in (4, 5):
        return rnd.choice((True, False, None))
    if kind in (6, 7):
        return [random_value(rnd, depth + 1) for _ in range(rnd.choice((0, 1, 3, 25)))]
    keys = {rnd.choice(("a", "b", "aa", "ba", "check_code", "贸", "x" * 30)) for _ in range(4)}
    return {k: random_value(rnd, depth + 1) for k in keys}


HOSTILE = [
    b"",
    b"\xa0",
    b"\x80",
    b"\x18\x17",  # a head longer than it need be
    b"\x19\x00\xff",
    b"\x1a\x00\x00\xff\xff",
    b"\x1b\x00\x00\x00\x00\xff\xff\xff\xff",
    b"\x1b\xff\xff\xff\xff\xff\xff\xff\xff",
    b"\x3b\xff\xff\xff\xff\xff\xff\xff\xff",
    b"\x1c",
    b"\xf7",
    b"\xff",
    b"\xf8\x20",
    b"\xf9\x00\x00",
    b"\xfb\x00\x00\x00\x00\x00\x00\x00\x00",
    b"\xc1\x00",
    b"\xd2\x80",
    b"\x5f\x41a\xff",
    b"\x7f\x61a\xff",
    b"\x9f\xff",
    b"\xbf\xff",
    b"\xa1\x01\x02",  # an integer key
    b"\xa1\x41a\x02",  # a byte-string key
    b"\xa1\x80\x02",
    b"\xa1\x81\x01",  # an array as a key, and nothing after it
    b"\xa1\x81\x01\x02",
    b"\xa1\xa1\x61a\x01\x02",
    b"\xa1\xf6\x02",
    b"\xa2\x61b\x01\x61a\x02",  # keys out of order
    b"\xa2\x61a\x01\x61a\x02",  # a key twice
    b"\xa2\x62aa\x01\x61b\x02",  # the longer key first
    b"\xa2\x61b\x01\x62aa\x02",
    b"\xa1\x61a",  # a map that ends after a key
    b"\x82\x01",
    b"\x61\xff",  # not UTF-8
    b"\x63\xed\xa0\x80",  # a surrogate
    b"\x01\x00",  # trailing bytes
    b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff",
    b"\x5b\x00\x00\x00\x01\x00\x00\x00\x00",
    b"\x81" * 16 + b"\x01",  # the depth bound
    b"\x81" * 17 + b"\x01",
    b"\x81" * 15 + b"\x80",
    b"\x81" * 16 + b"\x80",
]


@pytest.mark.parametrize("limits", [codec.CBOR_BODY, COSE, Limits(max_items=40, max_depth=3)])
def test_hostile_cbor_reads_as_before(limits: Limits, monkeypatch: pytest.MonkeyPatch) -> None:
    for raw in HOSTILE + payloads():
        assert outcome(raw, limits) == full_checks(raw, limits, monkeypatch), raw[:40].hex()


@pytest.mark.parametrize("seed", range(3))
def test_random_values_and_mutations_read_as_before(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    rnd = random.Random(seed)
    small = Limits(max_items=60, max_depth=4)
    for _ in range(150):
        raw = codec.encode(random_value(rnd))
        assert outcome(raw, codec.CBOR_BODY) == full_checks(raw, codec.CBOR_BODY, monkeypatch)
        assert outcome(raw, small) == full_checks(raw, small, monkeypatch)
        mutated = bytearray(raw)
        for _ in range(rnd.randint(1, 3)):
            op, at = rnd.random(), rnd.randrange(len(mutated) + 1)
            if op < 0.5 and at < len(mutated):
                mutated[at] = rnd.randrange(256)
            elif op < 0.8:
                mutated[at:at] = bytes([rnd.randrange(256)])
            else:
                del mutated[at : at + rnd.randint(1, 3)]
        changed = bytes(mutated)
        assert outcome(changed, codec.CBOR_BODY) == full_checks(
            changed, codec.CBOR_BODY, monkeypatch
        ), changed[:40].hex()


def test_the_one_pass_reads_documents_and_the_item_bound_holds() -> None:
    found = payloads()
    assert found and all(codec._decode_deterministic(p, codec.CBOR_BODY) for p in found)
    exact = codec.encode([1] * 9)  # ten items
    assert codec.decode_canonical(exact, Limits(max_items=10)) == [1] * 9
    with pytest.raises(codec.CodecError, match="larger than allowed"):
        codec.decode_canonical(exact, Limits(max_items=9))


@pytest.mark.parametrize("head", [b"\x9a", b"\xa1\x61a\x9a", b"\x82\x80\x9a"])
def test_a_container_declaring_more_items_than_allowed_builds_nothing(head: bytes) -> None:
    # A document's payload reaches decode_canonical before any signature is checked (the
    # chain parses what anyone submits). 100 KB of empty maps in one array: the policy
    # refuses it at its head; a decoder that reads on before counting builds 100,000
    # dicts (6 MB here, 2 GB from one 32 MB submission) only to refuse at the end.
    n = 100_000
    raw = head + n.to_bytes(4, "big") + b"\xa0" * n
    tracemalloc.start()
    try:
        with pytest.raises(codec.CodecError, match="larger than allowed"):
            codec.decode_canonical(raw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * len(raw) + 100_000
