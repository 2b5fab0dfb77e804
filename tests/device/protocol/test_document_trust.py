from __future__ import annotations

import base64
import hashlib
import hmac
import time

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pycose.keys.curves import Ed25519
from pycose.keys.keyparam import KpKty, OKPKpCurve, OKPKpX
from pycose.keys.keytype import KtyOKP
from pycose.keys.okp import OKPKey
from pycose.messages import Sign1Message

from device.protocol import codec, cose, merkle, trust
from device.protocol.document import (
    ZERO_HASH,
    DocumentError,
    Kind,
    check_code_from_mac,
    format_utc,
    parse_document,
    sign_document,
)
from device.protocol.invoice import make_line
from device.protocol.keys import KeyPair
from device.protocol.status import DeviceError, Status


def pycose_verify(raw: bytes, public_key: bytes) -> bytes:
    """Verify with the standard COSE library, independent of our code."""
    message = Sign1Message.decode(raw)
    message.key = OKPKey.from_dict({KpKty: KtyOKP, OKPKpCurve: Ed25519, OKPKpX: public_key})
    assert message.verify_signature()
    return bytes(message.payload)


def sample_fields(key: KeyPair, counter: int = 1, prev: bytes = ZERO_HASH) -> dict[str, object]:
    line = make_line("Tea", 1500, 333, 1300)
    return {
        "device_id": trust.device_id_for(key.public_key),
        "counter": counter,
        "code": "990000000001",
        "number": f"{counter:08d}",
        "kind": "invoice",
        "issued_at": "2026-11-25T10:00:00Z",
        "seller": {"name": "Shop", "tax_id": "91350100M000100Y43"},
        "buyer": None,
        "items": [line.to_payload()],
        "amount": line.amount,
        "tax": line.tax,
        "total": line.amount + line.tax,
        "prev_hash": prev,
        "offline": False,
        "training": True,
    }


def test_document_signs_and_standard_library_verifies() -> None:
    key = KeyPair.generate()
    raw, payload = sign_document(key, sample_fields(key))
    assert codec.decode(pycose_verify(raw, key.public_key)) == payload
    doc = parse_document(raw)
    assert doc.verify(key.public_key)
    assert doc.kind == Kind.INVOICE and doc.counter == 1 and len(doc.check_code) == 20
    assert not doc.verify(KeyPair.generate().public_key)


def test_signing_is_deterministic_and_check_code_depends_on_content() -> None:
    key = KeyPair.generate()
    a, pa = sign_document(key, sample_fields(key))
    b, _ = sign_document(key, sample_fields(key))
    _, pc = sign_document(key, sample_fields(key, counter=2))
    assert a == b
    assert pa["check_code"] != pc["check_code"]


def test_check_code_mac_is_hmac_sha256_under_the_check_key() -> None:
    key = KeyPair.generate()
    expected = hmac.new(key._check_key, b"message", hashlib.sha256).digest()
    assert key.check_code_mac(b"message") == expected
    assert key.check_code_mac(b"other") != expected


def test_utc_text_is_right_whichever_second_came_before() -> None:
    # format_utc keeps the last second's text: going back and forth must not reuse it wrongly.
    for seconds in (1_790_000_000, 1_790_000_000.9, 1_790_000_001, 0, 1_790_000_000, 59.5):
        assert format_utc(seconds) == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(seconds)))


def test_check_code_is_twenty_digits_of_the_mac_with_leading_zeros() -> None:
    for mac in (bytes(32), bytes(8) + b"\x07" + bytes(23), b"\xff" * 32, bytes(range(32))):
        expected = int.from_bytes(mac[:9], "big") % 10**20
        code = check_code_from_mac(mac)
        assert len(code) == 20 and code.isdigit() and int(code) == expected
    assert check_code_from_mac(bytes(8) + b"\x07" + bytes(23)) == "7".rjust(20, "0")


def test_tampered_payload_fails_verification() -> None:
    key = KeyPair.generate()
    raw, payload = sign_document(key, sample_fields(key))
    forged_payload = codec.encode(dict(payload, issued_at="2026-11-25T10:00:01Z"))
    env = cose.decode_sign1(raw)
    forged = cose.assemble(forged_payload, env.signature, env.kid)
    assert not parse_document(forged).verify(key.public_key)


def test_non_canonical_document_is_refused() -> None:
    key = KeyPair.generate()
    raw, payload = sign_document(key, sample_fields(key))
    env = cose.decode_sign1(raw)
    reordered = cbor2.dumps(dict(reversed(list(payload.items()))))
    with pytest.raises(DocumentError, match="deterministic"):
        parse_document(cose.assemble(reordered, env.signature, env.kid))


def test_document_with_bytes_after_it_is_refused() -> None:
    key = KeyPair.generate()
    raw, _ = sign_document(key, sample_fields(key))
    for extra in (b"\x00", b"\xf7", raw):
        with pytest.raises(DocumentError, match="deterministic"):
            parse_document(raw + extra)


def test_shape_errors_are_specific() -> None:
    key = KeyPair.generate()
    fields = sample_fields(key)
    del fields["offline"]
    raw, _ = sign_document(key, fields)
    with pytest.raises(DocumentError, match="missing \\['offline'\\]"):
        parse_document(raw)


@given(st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=70), st.data())
def test_merkle_paths_verify_and_match_rfc_definition(
    leaves: list[bytes], data: st.DataObject
) -> None:
    def mth(d: list[bytes]) -> bytes:  # RFC 9162 §2.1.1, recursive definition
        if len(d) == 1:
            return merkle.leaf_hash(d[0])
        k = 1
        while k * 2 < len(d):
            k *= 2
        return merkle.node_hash(mth(d[:k]), mth(d[k:]))

    tree = merkle.levels(leaves)
    assert tree[-1][0] == mth(leaves)
    index = data.draw(st.integers(0, len(leaves) - 1))
    path = merkle.audit_path(tree, index)
    assert merkle.root_from_path(leaves[index], index, len(leaves), path) == mth(leaves)
    if len(leaves) > 1:
        assert merkle.root_from_path(b"\x00" * 32, index, len(leaves), path) != mth(leaves)
        assert merkle.root_from_path(leaves[index], index, len(leaves), [*path, b"x"]) is None


def _consortium(n: int = 4) -> tuple[list[KeyPair], trust.ConsortiumKeys, KeyPair]:
    bureau = KeyPair.generate()
    nodes = [KeyPair.generate() for _ in range(n)]
    raw = trust.issue_consortium(
        bureau, "test-chain", 1, {f"node{i}": k.public_key for i, k in enumerate(nodes)}, False, 0
    )
    return nodes, trust.open_consortium(raw, bureau.public_key), bureau


def _receipt(
    nodes: list[KeyPair], signers: int, leaves: list[bytes], index: int
) -> dict[str, object]:
    tree = merkle.levels(leaves)
    header = {
        "chain_id": "test-chain",
        "height": 3,
        "prev_hash": bytes(32),
        "merkle_root": tree[-1][0],
        "time": "2026-11-25T10:00:00Z",
        "tx_count": len(leaves),
    }
    return {
        "device_id": "TCAAAAAAAAAAAA",
        "counter": 9,
        "doc_hash": leaves[index],
        "position": index,
        "proof": merkle.audit_path(tree, index),
        "header": header,
        "signatures": [
            {"node_id": f"node{i}", "signature": trust.sign_header(nodes[i], header)}
            for i in range(signers)
        ],
    }


def test_receipt_needs_quorum_of_listed_nodes() -> None:
    nodes, consortium, _ = _consortium()
    leaves = [bytes([i]) * 32 for i in range(5)]
    assert consortium.quorum == 3
    ok = trust.verify_receipt(_receipt(nodes, 3, leaves, 2), consortium)
    assert ok.doc_hash == leaves[2] and ok.height == 3
    with pytest.raises(DeviceError) as err:
        trust.verify_receipt(_receipt(nodes, 2, leaves, 2), consortium)
    assert err.value.status == Status.RECEIPT_INVALID
    # The same node signing three times is still one signature.
    dup = _receipt(nodes, 1, leaves, 2)
    dup["signatures"] = dup["signatures"] * 3  # type: ignore[operator]
    with pytest.raises(DeviceError):
        trust.verify_receipt(dup, consortium)
    # A node outside the list does not count.
    rogue = _receipt([*nodes[:2], KeyPair.generate()], 3, leaves, 2)
    with pytest.raises(DeviceError):
        trust.verify_receipt(rogue, consortium)
    # A doc hash moved into another position fails the audit path.
    moved = _receipt(nodes, 3, leaves, 2)
    moved["doc_hash"] = leaves[1]
    with pytest.raises(DeviceError, match="audit path"):
        trust.verify_receipt(moved, consortium)


def test_consortium_must_be_signed_by_the_pinned_bureau() -> None:
    _, consortium, bureau = _consortium()
    other = KeyPair.generate()
    with pytest.raises(DeviceError) as err:
        trust.open_consortium(consortium.raw, other.public_key)
    assert err.value.status == Status.CONSORTIUM_INVALID
    assert trust.open_consortium(consortium.raw, bureau.public_key).epoch == 1


def test_certificate_and_segment_chain_to_the_bureau() -> None:
    bureau, device = KeyPair.generate(), KeyPair.generate()
    csr = trust.open_csr(
        trust.make_csr(device, {"tax_id": "91350100M000100Y43", "name": "S"}, False, 0)
    )
    cert = trust.open_certificate(trust.issue_certificate(bureau, csr, 1, 0, 1), bureau.public_key)
    assert cert.device_id == trust.device_id_for(device.public_key)
    seg = trust.open_segment(
        trust.issue_segment(bureau, cert.device_id, "144031900111", 1, 500, False, 0),
        bureau.public_key,
    )
    assert seg.size == 500 and seg.contains("144031900111", 500)
    with pytest.raises(DeviceError) as err:
        trust.open_segment(seg.raw, KeyPair.generate().public_key)
    assert err.value.status == Status.SEGMENT_INVALID


def test_training_bureau_key_is_well_known() -> None:
    assert trust.TRAINING_BUREAU.seed.hex() == (
        __import__("hashlib").sha256(trust.TRAINING_BUREAU_LABEL.encode()).hexdigest()
    )
    assert base64.b16encode(trust.TRAINING_BUREAU.public_key)


def test_hand_built_encodings_equal_cbor2() -> None:
    key = KeyPair.generate()
    for size in (0, 23, 24, 255, 256, 70000):
        payload = bytes(size)
        assert cose.sig_structure(cose.PROTECTED_EDDSA, payload) == cbor2.dumps(
            ["Signature1", cose.PROTECTED_EDDSA, b"", payload]
        )
        sig = key.sign(payload)
        assert cose.assemble(payload, sig, b"kid") == cbor2.dumps(
            cbor2.CBORTag(18, [cose.PROTECTED_EDDSA, {4: b"kid"}, payload, sig]), canonical=True
        )


@given(
    st.dictionaries(
        st.text(st.characters(codec="ascii"), min_size=1, max_size=9), st.integers(), max_size=20
    )
)
def test_check_code_splice_equals_canonical_encoding(extra: dict[str, int]) -> None:
    key = KeyPair.generate()
    fields = dict(extra, device_id="TCAAAAAAAAAAAA")
    fields.pop("check_code", None)
    raw, payload = sign_document(key, fields)
    assert cose.decode_sign1(raw).payload == codec.encode(payload)


def test_keys_that_sort_after_check_code_are_still_deterministic() -> None:
    """A credit note's "confirmation" (12 bytes) sorts after "check_code"; so may a
    10-byte key. The signed payload is still the one deterministic encoding."""
    for extra in ("confirmation", "\x80" * 5, "zzzzzzzzzz"):
        raw, payload = sign_document(KeyPair.generate(), {"device_id": "TCAAAAAAAAAAAA", extra: 1})
        signed = cose.decode_sign1(raw).payload
        assert signed == codec.encode(payload) == cbor2.dumps(payload, canonical=True)
        assert codec.decode_canonical(signed) == payload


def test_document_crosses_processes_intact() -> None:
    """The chain's workers pickle parsed documents; the envelope is re-sliced on arrival."""
    import pickle

    key = KeyPair.generate()
    for fields in (sample_fields(key), sample_fields(key, counter=7)):
        doc = parse_document(sign_document(key, fields)[0])
        back = pickle.loads(pickle.dumps(doc))
        assert back == doc
        assert back.envelope == doc.envelope and back.signature == doc.signature
        assert back.verify(key.public_key)


def test_confirmation_is_a_credit_notes_optional_key_of_one_shape() -> None:
    """The buyer's red-letter confirmation id: only on a credit note, only RC + 16 hex."""
    from device.protocol.document import check_shape

    key = KeyPair.generate()
    fields = sample_fields(key)
    invoice_payload = parse_document(sign_document(key, fields)[0]).payload
    credit = dict(
        invoice_payload,
        kind="credit",
        refers_to={"code": invoice_payload["code"], "number": invoice_payload["number"]},
        reason="returned",
    )
    check_shape(credit)  # without one: as before
    check_shape(dict(credit, confirmation="RC0123456789ABCDEF"))
    for bad in ("RC0123456789abcdef", "RC0123", "RC0123456789ABCDEF0", 7, None):
        with pytest.raises(DocumentError, match="confirmation"):
            check_shape(dict(credit, confirmation=bad))
    with pytest.raises(DocumentError, match="unexpected"):
        check_shape(dict(invoice_payload, confirmation="RC0123456789ABCDEF"))
