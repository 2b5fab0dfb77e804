"""The chain of trust: tax bureau → certificates, segments, consortium keys → receipts.

A device pins exactly one key, the tax bureau's, when it is initialised.
Everything else it accepts must chain to it:

- a device certificate (bureau-signed) binds device id, device public key
  and taxpayer;
- a number segment (bureau-signed) gives the device an invoice code and a
  range of invoice numbers;
- the consortium list (bureau-signed, with an epoch that only grows) names
  the chain nodes' keys;
- a chain receipt proves, with 2f+1 signatures of listed nodes over a
  block header and an audit path into that block's Merkle root, that a
  document is final on the chain.

All signed objects are COSE_Sign1 (see cose.py) over a deterministic CBOR
map whose "type" says what it is. Training mode uses a well-known bureau
key derived from a public label, so that anybody can provision a training
device and chain; documents under it carry training: true and are never
valid invoices.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from device.protocol import codec, cose, merkle
from device.protocol.document import format_utc
from device.protocol.keys import PUBLIC_KEY_SIZE, KeyPair, verify
from device.protocol.status import DeviceError, Status
from device.protocol.untrusted import shown

TRAINING_BUREAU_LABEL = "taxctl training bureau key v1 - not valid for tax purposes"
TRAINING_BUREAU = KeyPair.derive(TRAINING_BUREAU_LABEL)
BUREAU_KID = b"bureau"
BLOCK_DOMAIN = b"taxctl/block/v1\x00"
ROTATION_DOMAIN = b"taxctl/rotation/v1\x00"


def device_id_for(public_key: bytes) -> str:
    """A device id derived from its public key: "TC" and 12 base32 characters."""
    import base64

    digest = hashlib.sha256(b"taxctl/device-id/v1\x00" + public_key).digest()
    return "TC" + base64.b32encode(digest).decode()[:12]


def quorum(node_count: int) -> int:
    """Signatures needed for finality among n nodes tolerating f = ⌊(n−1)/3⌋ faults."""
    f = (node_count - 1) // 3
    return 2 * f + 1


def sign_object(key: KeyPair, kid: bytes, fields: Mapping[str, Any]) -> bytes:
    return cose.sign1(codec.encode(dict(fields)), key, kid)


def open_object(
    raw: bytes, public_key: bytes, expected_type: str, status: Status
) -> dict[str, Any]:
    """Decode a signed object, check its signature and type; refuse with `status`."""
    try:
        envelope = cose.decode_sign1(raw)
        payload = codec.decode_canonical(envelope.payload)
    except (cose.CoseError, codec.CodecError) as exc:
        raise DeviceError(status, f"{expected_type}: {exc}") from None
    if not isinstance(payload, dict) or payload.get("type") != expected_type:
        raise DeviceError(status, f"not a {expected_type}")
    if not envelope.verify(public_key):
        raise DeviceError(status, f"{expected_type} signature does not verify")
    return payload


def _field(payload: Mapping[str, Any], key: str, kind: type, status: Status) -> Any:
    value = payload.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise DeviceError(status, f"field {shown(key)} missing or of the wrong type")
    return value


# --- CSR ---------------------------------------------------------------------------------


def make_csr(key: KeyPair, taxpayer: Mapping[str, str], training: bool, now: float) -> bytes:
    return sign_object(
        key,
        device_id_for(key.public_key).encode(),
        {
            "type": "csr",
            "device_id": device_id_for(key.public_key),
            "public_key": key.public_key,
            "taxpayer": dict(taxpayer),
            "training": training,
            "requested_at": format_utc(now),
        },
    )


def open_csr(raw: bytes) -> dict[str, Any]:
    """A CSR is signed by the key it asks to certify (proof of possession)."""
    try:
        envelope = cose.decode_sign1(raw)
        payload = codec.decode_canonical(envelope.payload)
    except (cose.CoseError, codec.CodecError) as exc:
        raise DeviceError(Status.CERT_INVALID, f"csr: {exc}") from None
    if not isinstance(payload, dict) or payload.get("type") != "csr":
        raise DeviceError(Status.CERT_INVALID, "not a csr")
    public_key = _field(payload, "public_key", bytes, Status.CERT_INVALID)
    if len(public_key) != PUBLIC_KEY_SIZE or not envelope.verify(public_key):
        raise DeviceError(Status.CERT_INVALID, "csr is not signed by the key it names")
    if payload.get("device_id") != device_id_for(public_key):
        raise DeviceError(Status.CERT_INVALID, "csr device id does not match its key")
    _field(payload, "taxpayer", dict, Status.CERT_INVALID)
    _field(payload, "training", bool, Status.CERT_INVALID)
    return payload


# --- Device certificate ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceCert:
    raw: bytes
    device_id: str
    public_key: bytes
    taxpayer: dict[str, str]
    training: bool
    serial: int
    issued_at: str
    not_after: str
    # The one chain the bureau certified this device for (None: a training or an older
    # certificate; such a device pins the first consortium it accepts).
    chain_id: str | None = None


def issue_certificate(
    bureau: KeyPair,
    csr: Mapping[str, Any],
    serial: int,
    now: float,
    years: int,
    chain_id: str | None = None,
) -> bytes:
    fields: dict[str, Any] = {
        "type": "device_cert",
        "serial": serial,
        "device_id": csr["device_id"],
        "public_key": csr["public_key"],
        "taxpayer": dict(csr["taxpayer"]),
        "training": bool(csr["training"]),
        "issued_at": format_utc(now),
        "not_after": format_utc(now + years * 365 * 86400),
    }
    if chain_id is not None:
        fields["chain_id"] = chain_id
    return sign_object(bureau, BUREAU_KID, fields)


def open_certificate(raw: bytes, bureau_key: bytes) -> DeviceCert:
    p = open_object(raw, bureau_key, "device_cert", Status.CERT_INVALID)
    taxpayer = _field(p, "taxpayer", dict, Status.CERT_INVALID)
    return DeviceCert(
        raw,
        _field(p, "device_id", str, Status.CERT_INVALID),
        _field(p, "public_key", bytes, Status.CERT_INVALID),
        {
            "name": _field(taxpayer, "name", str, Status.CERT_INVALID),
            "tax_id": _field(taxpayer, "tax_id", str, Status.CERT_INVALID),
        },
        _field(p, "training", bool, Status.CERT_INVALID),
        _field(p, "serial", int, Status.CERT_INVALID),
        _field(p, "issued_at", str, Status.CERT_INVALID),
        _field(p, "not_after", str, Status.CERT_INVALID),
        _field(p, "chain_id", str, Status.CERT_INVALID) if "chain_id" in p else None,
    )


# --- Number segment --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Segment:
    raw: bytes
    device_id: str
    code: str
    start: int
    end: int
    training: bool

    @property
    def size(self) -> int:
        return self.end - self.start + 1

    def contains(self, code: str, number: int) -> bool:
        return code == self.code and self.start <= number <= self.end


def issue_segment(
    bureau: KeyPair, device_id: str, code: str, start: int, end: int, training: bool, now: float
) -> bytes:
    return sign_object(
        bureau,
        BUREAU_KID,
        {
            "type": "segment",
            "device_id": device_id,
            "code": code,
            "start": start,
            "end": end,
            "training": training,
            "issued_at": format_utc(now),
        },
    )


def open_segment(raw: bytes, bureau_key: bytes) -> Segment:
    p = open_object(raw, bureau_key, "segment", Status.SEGMENT_INVALID)
    code = _field(p, "code", str, Status.SEGMENT_INVALID)
    start = _field(p, "start", int, Status.SEGMENT_INVALID)
    end = _field(p, "end", int, Status.SEGMENT_INVALID)
    if not (
        len(code) == 12 and code.isascii() and code.isdigit() and 1 <= start <= end <= 99_999_999
    ):
        raise DeviceError(Status.SEGMENT_INVALID, f"bad code or range {code} {start}..{end}")
    return Segment(
        raw,
        _field(p, "device_id", str, Status.SEGMENT_INVALID),
        code,
        start,
        end,
        _field(p, "training", bool, Status.SEGMENT_INVALID),
    )


def training_segment_code(device_id: str) -> str:
    """A 12-digit invoice code unique to a training device ("99" + 10 digits)."""
    digest = hashlib.sha256(b"taxctl/training-code/v1\x00" + device_id.encode()).digest()
    return "99" + f"{int.from_bytes(digest[:8], 'big') % 10**10:010d}"


# --- Segment request -------------------------------------------------------------------

# Numbers one signed request may ask for (the device and the chain both hold to it).
SEGMENT_REQUEST_MAX = 100_000
SEGMENT_NONCE_SIZE = 16


def make_segment_request(
    key: KeyPair, device_id: str, count: int, now: float, nonce: bytes
) -> bytes:
    """A request for `count` numbers, signed by the device key: the chain allocates a
    segment only to the holder of a certified key, and each nonce once."""
    return sign_object(
        key,
        device_id.encode(),
        {
            "type": "segment_request",
            "device_id": device_id,
            "count": count,
            "at": format_utc(now),
            "nonce": nonce,
        },
    )


# --- Consortium ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConsortiumKeys:
    """A bureau-signed consortium: the nodes' keys of one epoch of one chain."""

    raw: bytes
    chain_id: str
    epoch: int
    nodes: dict[str, bytes]
    training: bool

    @property
    def quorum(self) -> int:
        return quorum(len(self.nodes))


def issue_consortium(
    bureau: KeyPair,
    chain_id: str,
    epoch: int,
    nodes: Mapping[str, bytes],
    training: bool,
    now: float,
) -> bytes:
    return sign_object(
        bureau,
        BUREAU_KID,
        {
            "type": "consortium",
            "chain_id": chain_id,
            "epoch": epoch,
            "nodes": [{"node_id": n, "public_key": k} for n, k in sorted(nodes.items())],
            "training": training,
            "issued_at": format_utc(now),
        },
    )


def open_consortium(raw: bytes, bureau_key: bytes) -> ConsortiumKeys:
    p = open_object(raw, bureau_key, "consortium", Status.CONSORTIUM_INVALID)
    nodes: dict[str, bytes] = {}
    for entry in _field(p, "nodes", list, Status.CONSORTIUM_INVALID):
        if not isinstance(entry, dict):
            raise DeviceError(Status.CONSORTIUM_INVALID, "node entry must be a map")
        node_id = _field(entry, "node_id", str, Status.CONSORTIUM_INVALID)
        key = _field(entry, "public_key", bytes, Status.CONSORTIUM_INVALID)
        if len(key) != PUBLIC_KEY_SIZE or node_id in nodes:
            raise DeviceError(Status.CONSORTIUM_INVALID, f"bad or repeated node {shown(node_id)}")
        nodes[node_id] = key
    if not nodes:
        raise DeviceError(Status.CONSORTIUM_INVALID, "no nodes")
    return ConsortiumKeys(
        raw,
        _field(p, "chain_id", str, Status.CONSORTIUM_INVALID),
        _field(p, "epoch", int, Status.CONSORTIUM_INVALID),
        nodes,
        _field(p, "training", bool, Status.CONSORTIUM_INVALID),
    )


def rotation_message(new_raw: bytes) -> bytes:
    return ROTATION_DOMAIN + hashlib.sha256(new_raw).digest()


def sign_rotation(node_key: KeyPair, new_raw: bytes) -> bytes:
    """A current node's endorsement of the consortium that is to follow its own."""
    return node_key.sign(rotation_message(new_raw))


def check_rotation(new_raw: bytes, endorsements: object, current: ConsortiumKeys) -> None:
    """At least the current quorum of distinct current nodes endorsed `new_raw`."""
    if not isinstance(endorsements, list):
        raise DeviceError(
            Status.CONSORTIUM_INVALID,
            f"a new epoch needs the endorsements of {current.quorum} current nodes",
        )
    # More entries than this are never needed, and would only be verified for nothing.
    entries = endorsements[: 4 * len(current.nodes) + 4]
    good = signers(entries, current.nodes, rotation_message(new_raw))
    if len(good) < current.quorum:
        raise DeviceError(
            Status.CONSORTIUM_INVALID,
            f"epoch {current.epoch + 1} endorsed by {len(good)} current nodes, "
            f"{current.quorum} needed",
        )


# --- Blocks and receipts ---------------------------------------------------------------

HEADER_KEYS = frozenset({"chain_id", "height", "prev_hash", "merkle_root", "time", "tx_count"})


def header_bytes(header: Mapping[str, Any]) -> bytes:
    return codec.encode(dict(header))


def block_hash(header: Mapping[str, Any]) -> bytes:
    return hashlib.sha256(header_bytes(header)).digest()


def sign_header(node: KeyPair, header: Mapping[str, Any]) -> bytes:
    return node.sign(BLOCK_DOMAIN + header_bytes(header))


@dataclass(frozen=True, slots=True)
class VerifiedReceipt:
    device_id: str
    counter: int
    doc_hash: bytes
    height: int
    time: str = ""  # the block header's time, signed by the quorum


def signers(entries: Iterable[object], nodes: Mapping[str, bytes], message: bytes) -> set[str]:
    """The nodes with a good signature over `message` among `entries` ({node_id, signature}
    maps): anything else, an unknown node or a node's second entry counts for nothing."""
    good: set[str] = set()
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        node_id, sig = entry.get("node_id"), entry.get("signature")
        key = nodes.get(node_id) if isinstance(node_id, str) else None
        if key is None or not isinstance(sig, bytes) or node_id in good:
            continue
        if verify(key, message, sig):
            good.add(str(node_id))
    return good


def check_quorum(header: Mapping[str, Any], signatures: object, consortium: ConsortiumKeys) -> None:
    """At least 2f+1 distinct listed nodes signed this header."""
    if not isinstance(signatures, list):
        raise DeviceError(Status.RECEIPT_INVALID, "signatures must be a list")
    good = signers(signatures, consortium.nodes, BLOCK_DOMAIN + header_bytes(header))
    if len(good) < consortium.quorum:
        raise DeviceError(
            Status.RECEIPT_INVALID,
            f"{len(good)} valid node signatures, {consortium.quorum} needed",
        )


def verify_receipt(
    receipt: object, consortium: ConsortiumKeys, verified_headers: dict[bytes, int] | None = None
) -> VerifiedReceipt:
    """Check a receipt against the consortium keys.

    `verified_headers` caches block hashes whose quorum was already checked,
    so a batch of receipts from one block costs one quorum check.
    """
    if not isinstance(receipt, dict):
        raise DeviceError(Status.RECEIPT_INVALID, "receipt must be a map")
    header = receipt.get("header")
    if not isinstance(header, dict) or set(header) != HEADER_KEYS:
        raise DeviceError(Status.RECEIPT_INVALID, "receipt header malformed")
    if header.get("chain_id") != consortium.chain_id:
        raise DeviceError(Status.RECEIPT_INVALID, "receipt is from another chain")
    doc_hash = receipt.get("doc_hash")
    position = receipt.get("position")
    size = header.get("tx_count")
    height = header.get("height")
    path = receipt.get("proof")
    # Every field is typed before anything is computed from it: a quorum signs whatever
    # bytes it is given, so a valid signature says nothing about their types. (bool is
    # an int subclass; type() keeps true/false out of the integers.)
    if not (
        isinstance(doc_hash, bytes)
        and type(position) is int
        and type(size) is int
        and type(height) is int
        and height >= 0
        and isinstance(path, list)
        and all(isinstance(p, bytes) for p in path)
    ):
        raise DeviceError(Status.RECEIPT_INVALID, "receipt fields malformed")
    if merkle.root_from_path(doc_hash, position, size, path) != header.get("merkle_root"):
        raise DeviceError(Status.RECEIPT_INVALID, "audit path does not lead to the block's root")
    digest = block_hash(header)
    if verified_headers is None or digest not in verified_headers:
        check_quorum(header, receipt.get("signatures"), consortium)
        if verified_headers is not None:
            verified_headers[digest] = height
    device_id, counter = receipt.get("device_id"), receipt.get("counter")
    if not isinstance(device_id, str) or type(counter) is not int or counter < 1:
        raise DeviceError(Status.RECEIPT_INVALID, "receipt must name device and counter")
    block_time = header.get("time")
    return VerifiedReceipt(
        device_id, counter, doc_hash, height, block_time if isinstance(block_time, str) else ""
    )
