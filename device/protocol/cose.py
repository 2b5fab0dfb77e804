"""COSE_Sign1 with EdDSA over Ed25519 (RFC 9052 §4.2, RFC 9053 §2.2).

Every signed object in the project (documents, certificates, segments,
the consortium key list, CSRs) is a tagged COSE_Sign1 whose protected
header is exactly {1: -8} (alg EdDSA) and whose unprotected header carries
the signer's key id (label 4). Any standard COSE library verifies them.
"""

from __future__ import annotations

from dataclasses import dataclass

import cbor2

from device.protocol import codec, untrusted
from device.protocol.keys import SIGNATURE_SIZE, KeyPair, verify

TAG_SIGN1 = 18
HEADER_ALG = 1
HEADER_KID = 4
ALG_EDDSA = -8
PROTECTED_EDDSA = codec.encode({HEADER_ALG: ALG_EDDSA})  # a1 01 27


class CoseError(ValueError):
    """Bytes that are not a COSE_Sign1 of the form this project signs."""


def bstr_header(length: int) -> bytes:
    """The CBOR head of a byte string of `length` bytes (major type 2, shortest form)."""
    if length < 24:
        return bytes([0x40 + length])
    if length < 0x100:
        return bytes([0x58, length])
    if length < 0x10000:
        return bytes([0x59]) + length.to_bytes(2, "big")
    return bytes([0x5A]) + length.to_bytes(4, "big")


# ["Signature1", h'a10127', h'', payload] up to the payload's byte-string head.
_SIG1_PREFIX = b"\x84\x6aSignature1" + bstr_header(len(PROTECTED_EDDSA)) + PROTECTED_EDDSA + b"\x40"


def sig_structure(protected: bytes, payload: bytes, external_aad: bytes = b"") -> bytes:
    if protected == PROTECTED_EDDSA and not external_aad:
        # Hand-assembled: this runs for every document and equals the cbor2 encoding (tested).
        return _SIG1_PREFIX + bstr_header(len(payload)) + payload
    return codec.encode_ordered(["Signature1", protected, external_aad, payload])


def sign1(payload: bytes, key: KeyPair, kid: bytes) -> bytes:
    signature = key.sign(sig_structure(PROTECTED_EDDSA, payload))
    return assemble(payload, signature, kid)


# Tag 18, array of 4, the protected header, then the unprotected map {4: kid}.
_ENVELOPE_PREFIX = b"\xd2\x84" + bstr_header(len(PROTECTED_EDDSA)) + PROTECTED_EDDSA + b"\xa1\x04"


def assemble(payload: bytes, signature: bytes, kid: bytes) -> bytes:
    """The tagged COSE_Sign1 bytes, assembled by hand (equal to cbor2's output; tested)."""
    return b"".join(
        (
            _ENVELOPE_PREFIX,
            bstr_header(len(kid)),
            kid,
            bstr_header(len(payload)),
            payload,
            bstr_header(len(signature)),
            signature,
        )
    )


@dataclass(frozen=True, slots=True)
class Sign1:
    payload: bytes
    signature: bytes
    kid: bytes
    raw: bytes

    def to_be_signed(self) -> bytes:
        return sig_structure(PROTECTED_EDDSA, self.payload)

    def verify(self, public_key: bytes) -> bool:
        return verify(public_key, self.to_be_signed(), self.signature)


def _bstr_at(raw: bytes, pos: int) -> tuple[int, int] | None:
    """(start, end) of the byte string whose head is at `pos`, in a head form `bstr_header`
    writes, or None."""
    if pos >= len(raw):
        return None
    initial = raw[pos]
    if 0x40 <= initial < 0x58:
        start = pos + 1
        return start, start + initial - 0x40
    size = _HEAD_SIZES.get(initial)
    if size is None:
        return None
    start = pos + 1 + size
    return start, start + int.from_bytes(raw[pos + 1 : start], "big")


_HEAD_SIZES = {0x58: 1, 0x59: 2, 0x5A: 4}


def _split_sign1(raw: bytes) -> Sign1 | None:
    """The envelope read by position, if `raw` is exactly what `assemble` writes, else None.

    Every document syncd answers for is in this form; reading it by position costs a
    fifth of walking it with the decoding policy and cbor2. Anything else (None) takes
    that path, which gives every refusal its message. What is accepted here is what that
    path accepts (8 items, tag 18, the fixed headers, a 64-byte signature, and bytes equal
    to `assemble` of the parts), with the same parts."""
    if not raw.startswith(_ENVELOPE_PREFIX):
        return None
    kid = _bstr_at(raw, len(_ENVELOPE_PREFIX))
    if kid is None:
        return None
    payload = _bstr_at(raw, kid[1])
    if payload is None or raw[payload[1] : payload[1] + 2] != b"\x58\x40":
        return None
    parts = raw[kid[0] : kid[1]], raw[payload[0] : payload[1]], raw[payload[1] + 2 :]
    if len(parts[2]) != SIGNATURE_SIZE or assemble(parts[1], parts[2], parts[0]) != raw:
        return None
    return Sign1(parts[1], parts[2], parts[0], raw)


def decode_sign1(data: bytes | bytearray | memoryview) -> Sign1:
    raw = bytes(data)
    fast = _split_sign1(raw)
    if fast is not None:
        return fast
    try:
        item = codec.decode_leading(raw, untrusted.COSE)  # exactness: the re-assembly check below
    except codec.CodecError as exc:
        raise CoseError(str(exc)) from exc
    if not isinstance(item, cbor2.CBORTag) or item.tag != TAG_SIGN1:
        raise CoseError("not a tagged COSE_Sign1 (tag 18)")
    value = item.value
    if not isinstance(value, list) or len(value) != 4:
        raise CoseError("COSE_Sign1 must be an array of 4 elements")
    protected, unprotected, payload, signature = value
    if protected != PROTECTED_EDDSA:
        raise CoseError("protected header must be exactly {1: -8} (EdDSA)")
    if not isinstance(unprotected, dict) or set(unprotected) - {HEADER_KID}:
        raise CoseError("unprotected header may only hold a key id (label 4)")
    kid = unprotected.get(HEADER_KID, b"")
    if not isinstance(kid, bytes):
        raise CoseError("key id must be a byte string")
    if not isinstance(payload, bytes):
        raise CoseError("payload must be an attached byte string")
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_SIZE:
        raise CoseError(f"signature must be {SIGNATURE_SIZE} bytes")
    if assemble(payload, signature, kid) != raw:
        # The one deterministic encoding of these four parts (assemble is what
        # the encoder uses, and equals cbor2's canonical output).
        raise CoseError("COSE_Sign1 is not in deterministic encoding (RFC 8949 §4.2.1)")
    return Sign1(payload, signature, kid, raw)
