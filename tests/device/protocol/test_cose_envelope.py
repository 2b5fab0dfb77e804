"""Reading a COSE_Sign1 envelope by position gives what the decoding policy and cbor2
give (the same parts, or the same refusal) on signed envelopes and hostile variations."""

from __future__ import annotations

import random

import cbor2
import pytest

from device.protocol import cose
from device.protocol.keys import KeyPair

KEY = KeyPair.derive("cose envelope")


def slow(raw: bytes, monkeypatch: pytest.MonkeyPatch) -> object:
    with monkeypatch.context() as patch:
        patch.setattr(cose, "_split_sign1", lambda raw: None)
        return outcome(raw)


def outcome(raw: bytes) -> object:
    try:
        return cose.decode_sign1(raw)
    except cose.CoseError as exc:
        return ("refused", str(exc))


def envelopes() -> list[bytes]:
    out = []
    for kid, size in ((b"", 0), (b"TC0123456789AB", 5), (b"k" * 30, 23), (b"x", 24)):
        for payload_size in (size, 255, 256, 70000):
            out.append(
                cose.sign1(
                    bytes(range(256)) * (payload_size // 256) + b"p" * (payload_size % 256),
                    KEY,
                    kid,
                )
            )
    raw = cose.sign1(b"payload", KEY, b"TC0123456789AB")  # the kid's head is raw[8]
    envelope = cbor2.loads(raw)
    protected, unprotected, payload, signature = envelope.value
    out += [
        raw[:-1],
        raw + b"\x00",
        raw[:20],
        raw[:8] + b"\x58\x0e" + raw[9:],  # a kid head longer than it need be
        cbor2.dumps(cbor2.CBORTag(18, [protected, unprotected, payload, signature + b"!"])),
        cbor2.dumps(cbor2.CBORTag(18, [protected, unprotected, payload, signature[:63]])),
        cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, signature])),
        cbor2.dumps(cbor2.CBORTag(18, [protected, {4: "text"}, payload, signature])),
        cbor2.dumps(cbor2.CBORTag(18, [protected, unprotected, "text", signature])),
        cbor2.dumps(cbor2.CBORTag(19, [protected, unprotected, payload, signature])),
        cbor2.dumps([protected, unprotected, payload, signature]),
        raw[:8] + b"\x5b" + bytes(7) + b"\x0e" + raw[9:],  # an 8-byte head
        b"",
        b"\xd2",
    ]
    return out


def mutated(seed: int, count: int) -> list[bytes]:
    rnd = random.Random(seed)
    base = envelopes()
    out = []
    for _ in range(count):
        raw = bytearray(rnd.choice(base[:8]))
        for _ in range(rnd.randint(1, 3)):
            at = rnd.randrange(min(len(raw), 40))  # the heads are near the start
            raw[at] = rnd.choice((0x40, 0x57, 0x58, 0x59, 0x5A, 0x5B, 0x5F, rnd.randrange(256)))
        out.append(bytes(raw))
    return out


def test_signed_envelopes_and_named_variations_read_as_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for raw in envelopes():
        assert outcome(raw) == slow(raw, monkeypatch), raw[:16].hex()


@pytest.mark.parametrize("seed", range(3))
def test_random_variations_read_as_before(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    for raw in mutated(seed, 300):
        assert outcome(raw) == slow(raw, monkeypatch), raw[:16].hex()


def test_the_signed_envelope_is_read_by_position() -> None:
    raw = cose.sign1(b"payload", KEY, b"kid")
    fast = cose._split_sign1(raw)
    assert fast == cose.Sign1(b"payload", fast.signature if fast else b"", b"kid", raw)
    assert fast is not None and fast.verify(KEY.public_key)
