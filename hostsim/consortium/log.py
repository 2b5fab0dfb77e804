"""The consortium's records in etcd: key layout and the (bounded) encoding of each value.

Under `/taxctl/<chain id>/`:

- `log/<hash>`: one submission, created if absent — a batch of documents
  (`{"docs": [COSE bytes, ...]}`, named by the SHA-256 of its documents' hashes,
  so sending the same batch again writes the same key) or a bureau act or
  claim (`{"act": name, "args": {...}}`, named by the hash of its encoding);
- `prop/<seq>`: the proposer's cut, `{"seq", "from", "to", "time"}`: the log
  entries created after revision `from` up to and including `to` form the next
  block, stamped `time`;
- `sig/<seq>/<node>`: a node's signature over the header it built for `seq`;
- `final/<seq>/<node>`: a quorum of matching signatures a node gathered; the
  one created first (lowest revision) that verifies is the block's;
- `applied/<node>`: how far a node has applied (its watermark, for compaction);
- `alive/<node>`: present while the node's lease is kept alive (reachability);
- `leader`: the proposer's node id, under its lease;
- `tick`: rewritten (empty) with every log entry, in the same transaction: the
  nodes watch everything but `log/` (whose values are large), and this wakes them.

Every value read back is hostile (any etcd client with write access could
have put it): decoded with `codec.decode` under explicit limits, each field
typed, or refused with `BadRecord`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from device.protocol import codec, untrusted
from device.protocol.document import parse_utc

# etcd refuses a request over --max-request-bytes (1.5 MiB by default; `consortium up`
# sets 8 MiB): a batch is cut into entries of at most this many bytes of documents.
MAX_ENTRY_BYTES = 1024 * 1024
ENTRY_LIMITS = untrusted.CBOR_BODY.allowing(max_depth=4, max_items=100_000)
RECORD_LIMITS = untrusted.CBOR_BODY.allowing(max_depth=4, max_items=4_096)
SEQ_DIGITS = 12


class BadRecord(ValueError):
    """A value in etcd that is not what this module writes."""


class Keys:
    def __init__(self, chain_id: str) -> None:
        self.root = f"/taxctl/{chain_id}/".encode()
        self.log = self.root + b"log/"
        self.prop = self.root + b"prop/"
        self.sig = self.root + b"sig/"
        self.final = self.root + b"final/"
        self.applied = self.root + b"applied/"
        self.alive = self.root + b"alive/"
        self.leader = self.root + b"leader"
        self.tick = self.root + b"tick"

    def log_key(self, name: bytes) -> bytes:
        return self.log + name.hex().encode()

    def prop_key(self, seq: int) -> bytes:
        return self.prop + _seq(seq)

    def sig_prefix(self, seq: int) -> bytes:
        return self.sig + _seq(seq) + b"/"

    def final_prefix(self, seq: int) -> bytes:
        return self.final + _seq(seq) + b"/"

    def applied_key(self, node_id: str) -> bytes:
        return self.applied + node_id.encode()

    def alive_key(self, node_id: str) -> bytes:
        return self.alive + node_id.encode()


def _seq(seq: int) -> bytes:
    return f"{seq:0{SEQ_DIGITS}d}".encode()


def seq_of(key: bytes, prefix: bytes) -> int | None:
    """The sequence number in a `prop/`, `sig/` or `final/` key, or None."""
    text = key[len(prefix) : len(prefix) + SEQ_DIGITS]
    return int(text) if text.isdigit() and len(text) == SEQ_DIGITS else None


def _decode(raw: bytes, limits: untrusted.Limits) -> dict[str, Any]:
    try:
        value = codec.decode(raw, limits)
    except codec.CodecError as exc:
        raise BadRecord(f"does not decode: {exc}") from None
    if not isinstance(value, dict):
        raise BadRecord("is not a map")
    return value


# --- log entries ---------------------------------------------------------------------------


def doc_entries(raws: Sequence[bytes], hashes: Sequence[bytes]) -> list[tuple[bytes, bytes]]:
    """(name, value) of the log entries carrying these documents, each within
    MAX_ENTRY_BYTES; the name is the SHA-256 over the entry's document hashes."""
    out: list[tuple[bytes, bytes]] = []
    start = 0
    while start < len(raws):
        end, size = start, 0
        while end < len(raws) and (end == start or size + len(raws[end]) <= MAX_ENTRY_BYTES):
            size += len(raws[end])
            end += 1
        name = hashlib.sha256(b"".join(hashes[start:end])).digest()
        out.append((name, codec.encode({"docs": list(raws[start:end])})))
        start = end
    return out


def act_entry(name: str, args: dict[str, Any]) -> tuple[bytes, bytes]:
    value = codec.encode({"act": name, "args": args})
    return hashlib.sha256(value).digest(), value


@dataclass(frozen=True, slots=True)
class Entry:
    docs: list[bytes] | None = None
    act: str | None = None
    args: dict[str, Any] | None = None


def read_entry(raw: bytes) -> Entry:
    value = _decode(raw, ENTRY_LIMITS)
    if "docs" in value:
        docs = value["docs"]
        if not isinstance(docs, list) or not all(isinstance(d, bytes) for d in docs):
            raise BadRecord("docs is not a list of byte strings")
        return Entry(docs=docs)
    act, args = value.get("act"), value.get("args")
    if not isinstance(act, str) or not isinstance(args, dict):
        raise BadRecord("neither documents nor an act")
    return Entry(act=act, args=args)


# --- proposals, signatures, finals ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Proposal:
    seq: int
    start: int  # entries created after this revision…
    end: int  # …up to and including this one
    time: str

    def encode(self) -> bytes:
        return codec.encode(
            {"seq": self.seq, "from": self.start, "to": self.end, "time": self.time}
        )


def read_proposal(raw: bytes) -> Proposal:
    value = _decode(raw, RECORD_LIMITS)
    seq, start, end, time = value.get("seq"), value.get("from"), value.get("to"), value.get("time")
    if not (type(seq) is int and type(start) is int and type(end) is int and end > start >= 0):
        raise BadRecord("seq, from and to are integers with to > from")
    if not isinstance(time, str):
        raise BadRecord("time is not text")
    try:
        parse_utc(time)
    except ValueError:
        raise BadRecord("time is not a UTC timestamp") from None
    return Proposal(seq, start, end, time)


def signature_value(header: bytes, signature: bytes) -> bytes:
    return codec.encode({"header": header, "signature": signature})


def read_signature(raw: bytes) -> tuple[bytes, bytes]:
    value = _decode(raw, RECORD_LIMITS)
    header, signature = value.get("header"), value.get("signature")
    if not isinstance(header, bytes) or not isinstance(signature, bytes):
        raise BadRecord("header and signature are byte strings")
    return header, signature


def final_value(header: bytes, signatures: list[dict[str, Any]]) -> bytes:
    return codec.encode({"header": header, "signatures": signatures})


def read_final(raw: bytes) -> tuple[bytes, list[Any]]:
    value = _decode(raw, RECORD_LIMITS)
    header, signatures = value.get("header"), value.get("signatures")
    if not isinstance(header, bytes) or not isinstance(signatures, list):
        raise BadRecord("header is bytes and signatures a list")
    return header, signatures


def watermark_value(seq: int, revision: int, height: int) -> bytes:
    return codec.encode({"seq": seq, "rev": revision, "height": height})


def read_watermark(raw: bytes) -> tuple[int, int, int]:
    value = _decode(raw, RECORD_LIMITS)
    seq, rev, height = value.get("seq"), value.get("rev"), value.get("height")
    if not (type(seq) is int and type(rev) is int and type(height) is int):
        raise BadRecord("seq, rev and height are integers")
    return seq, rev, height
