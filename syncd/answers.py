"""The chain's answers, checked against its API before syncd uses them.

docs/chain-openapi.yaml defines every answer syncd reads (a submission's
results with compact receipts and their blocks, the consortium, a
registration, a segment, health, an error body). A chain that is buggy or
rogue, or a middlebox in front of it, can answer anything; so each answer
is turned here into typed values or refused as a whole with
`ChainDown(..., "BAD_ANSWER")` — the same "no usable answer, try again
later" as a chain that is away. Nothing else in syncd looks inside a raw
answer. Pure functions, no I/O.

Messages name the field and describe a wrong value with `shown` (type and
size, or a short escaped text), never the value itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from device.protocol import chainapi, codec
from device.protocol.chainapi import ADMITTED, Code, SubmitStatus
from device.protocol.untrusted import (
    CBOR_BODY,
    CHAIN_ANSWER,
    JSON_BODY,
    InputRefused,
    loads_json,
    shown,
)
from syncd.chainport import ChainDown, Registration, SubmitResult

BAD_ANSWER = "BAD_ANSWER"
CBOR = "application/cbor"
# Far above any answer the API can give (1000 full receipts are a few MiB); an answer
# declaring more is refused before it is read, one sending more when it passes this.
MAX_ANSWER_BYTES = 64 * 1024 * 1024
# An error body is a code and a sentence; a longer one is not decoded at all.
MAX_ERROR_BYTES = 64 * 1024
MESSAGE_CHARS = 200
_CODE = re.compile(r"[A-Za-z0-9_]{1,64}")
_DEVICE_ID = re.compile(r"TC[0-9A-Z]{12}")
_INVOICE_CODE = re.compile(r"[0-9]{12}")

T = TypeVar("T")

# The ErrorCode enum of docs/chain-openapi.yaml (a test keeps the two equal).
CHAIN_CODES = frozenset(code.value for code in Code)
# syncd's own codes for a chain that is away or answers wrongly (chainport.ChainDown)
OWN_CODES = frozenset({BAD_ANSWER, "UNAVAILABLE"})


# every value code_label() gives, for a series of each from the start
CODE_LABELS = tuple(sorted(CHAIN_CODES | OWN_CODES | {"other"}))


def code_label(code: str) -> str:
    """A chain's code as a metric label: the API's codes and syncd's own keep theirs, any
    other is `other`, so a chain that makes codes up cannot add a series per answer."""
    return code if code in CHAIN_CODES or code in OWN_CODES else "other"


def bad(what: str) -> ChainDown:
    return ChainDown(f"the chain's answer is not what its API defines: {what}", BAD_ANSWER)


# --- decoding ----------------------------------------------------------------------------


def decode(raw: bytes, kind: str) -> Any:
    """A 2xx body, through the shared decoding policy (CBOR when so labelled, else JSON)."""
    if len(raw) > MAX_ANSWER_BYTES:
        raise bad(f"{len(raw)} bytes, more than {MAX_ANSWER_BYTES}")
    try:
        if kind == CBOR:
            return codec.decode(raw, CHAIN_ANSWER)
        return loads_json(raw or b"null", CHAIN_ANSWER)
    except (codec.CodecError, InputRefused) as exc:
        raise bad(f"the body does not decode ({exc})") from None


def error_of(raw: bytes, kind: str) -> tuple[str, str]:
    """The `{"error": {"code", "message"}}` of a refusal: (code, a bounded sentence).

    A refusal is believed only in that form: anything else (too long to be one,
    not decoding, no code of the API's form) is a bad answer, retried later, not a
    refusal with whatever it holds. The code becomes a metric label and is compared
    with known codes; the message is shortened and escaped.
    """
    if len(raw) > MAX_ERROR_BYTES:
        raise bad(f"an error body of {len(raw)} bytes, more than {MAX_ERROR_BYTES}")
    try:
        body = codec.decode(raw, CBOR_BODY) if kind == CBOR else loads_json(raw, JSON_BODY)
    except (codec.CodecError, InputRefused) as exc:
        raise bad(f"the error body does not decode ({exc})") from None
    error = _map(_map(body, "the error body").get("error"), "the error body's error")
    code = _text(error.get("code"), "the error body's code", _CODE)
    return code, sentence(_text(error.get("message"), "the error body's message"))


def sentence(text: str) -> str:
    """A chain's sentence for people, as syncd may log and show it: bounded, escaped."""
    return shown(text, MESSAGE_CHARS)[1:-1]


# --- field checks ------------------------------------------------------------------------


def _map(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad(f"{what} is {shown(value)}, not a map")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise bad(f"{what} is {shown(value)}, not a list")
    return value


def _int(value: Any, what: str, minimum: int | None = None) -> int:
    if type(value) is not int:  # bool is an int to Python, never to the API
        raise bad(f"{what} is {shown(value)}, not an integer")
    if minimum is not None and value < minimum:
        raise bad(f"{what} is {shown(value)}, below {minimum}")
    return value


def _text(value: Any, what: str, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(value, str):
        raise bad(f"{what} is {shown(value)}, not text")
    if pattern is not None and not pattern.fullmatch(value):
        raise bad(f"{what} {shown(value)} has the wrong form")
    return value


def _bytes(value: Any, what: str, size: int | None = None) -> bytes:
    if not isinstance(value, bytes):
        raise bad(f"{what} is {shown(value)}, not bytes")
    if size is not None and len(value) != size:
        raise bad(f"{what} is {len(value)} bytes, not {size}")
    return value


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise bad(f"{what} is {shown(value)}, not true or false")
    return value


def _optional(
    body: dict[str, Any], key: str, check: Callable[[Any, str], T], what: str
) -> T | None:
    return None if body.get(key) is None else check(body[key], what)


# --- blocks and receipts -----------------------------------------------------------------


def header_of(value: Any, what: str) -> dict[str, Any]:
    header = _map(value, what)
    _text(header.get("chain_id"), f"{what}'s chain_id")
    _int(header.get("height"), f"{what}'s height", 1)
    _bytes(header.get("prev_hash"), f"{what}'s prev_hash", 32)
    _bytes(header.get("merkle_root"), f"{what}'s merkle_root", 32)
    _text(header.get("time"), f"{what}'s time")
    _int(header.get("tx_count"), f"{what}'s tx_count", 1)
    return header


def signatures_of(value: Any, what: str) -> list[Any]:
    signatures = _list(value, what)
    for i, entry in enumerate(signatures):
        sig = _map(entry, f"{what}[{i}]")
        _text(sig.get("node_id"), f"{what}[{i}]'s node_id")
        _bytes(sig.get("signature"), f"{what}[{i}]'s signature", 64)
    return signatures


def blocks_by_height(blocks: Any) -> dict[int, dict[str, Any]]:
    """A compact answer's `blocks` (header and signatures of each), by height."""
    out: dict[int, dict[str, Any]] = {}
    for i, entry in enumerate(_list(blocks, "the answer's blocks")):
        block = _map(entry, f"block {i}")
        header = header_of(block.get("header"), f"block {i}'s header")
        signatures_of(block.get("signatures"), f"block {i}'s signatures")
        out[header["height"]] = block
    return out


def full_receipt(receipt: dict[str, Any], blocks: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """A compact receipt with its block's header and signatures put back: the same
    receipt the chain gives in full (a full one is returned as it is)."""
    if not chainapi.is_compact(receipt):
        return receipt
    height = _int(receipt["height"], "a receipt's height", 1)
    block = blocks.get(height)
    if block is None:
        raise bad(f"a receipt names block {height} without listing it")
    return chainapi.full_receipt(receipt, block)


def receipt_of(value: Any, what: str, blocks: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """A Receipt or CompactReceipt, checked, and always handed on full."""
    receipt = _map(value, what)
    _bytes(receipt.get("doc_hash"), f"{what}'s doc_hash", 32)
    _int(receipt.get("position"), f"{what}'s position", 0)
    for i, sibling in enumerate(_list(receipt.get("proof"), f"{what}'s proof")):
        _bytes(sibling, f"{what}'s proof[{i}]", 32)
    _optional(receipt, "device_id", _text, f"{what}'s device_id")
    if receipt.get("counter") is not None:
        _int(receipt["counter"], f"{what}'s counter", 1)
    if chainapi.is_compact(receipt):
        return full_receipt(receipt, blocks)
    header_of(receipt.get("header"), f"{what}'s header")
    signatures_of(receipt.get("signatures"), f"{what}'s signatures")
    return receipt


# --- the answers -------------------------------------------------------------------------


def result_of(value: Any, index: int, blocks: dict[int, dict[str, Any]]) -> SubmitResult:
    what = f"result {index}"
    result = _map(value, what)
    raw_status = result.get("status")
    try:
        status = SubmitStatus(raw_status) if isinstance(raw_status, str) else None
    except ValueError:
        status = None
    if status is None:
        raise bad(f"{what}'s status is {shown(raw_status)}")
    counter = None
    if result.get("counter") is not None:
        counter = _int(result["counter"], f"{what}'s counter", 1)
    receipt = code = message = None
    if status in ADMITTED:
        receipt = receipt_of(result.get("receipt"), f"{what}'s receipt", blocks)
    if status == SubmitStatus.REJECTED:
        code = _text(result.get("code"), f"{what}'s code", _CODE)
        message = sentence(_text(result.get("message"), f"{what}'s message"))
    return SubmitResult(status, receipt, code, message, counter)


def submit_answer(value: Any, sent: int) -> list[SubmitResult]:
    """A SubmitAnswer to `sent` documents: one result per document, receipts made full."""
    answer = _map(value, "the submit answer")
    _int(answer.get("height"), "the submit answer's height", 0)
    for status, count in _map(answer.get("counts"), "the submit answer's counts").items():
        _int(count, f"the submit answer's count of {shown(status)}", 1)
    results = _list(answer.get("results"), "the submit answer's results")
    check_result_count(results, sent)
    blocks = blocks_by_height(answer["blocks"]) if "blocks" in answer else {}
    return [result_of(r, i, blocks) for i, r in enumerate(results)]


def check_result_count(results: Sequence[object], sent: int) -> None:
    """One result per document sent, or the answer is a bad one (the submission's outcome
    is unknown: sent again later, it is answered with the same receipts)."""
    if len(results) != sent:
        raise bad(f"{len(results)} results for {sent} documents")


MAX_ENDORSEMENTS = 64  # one per node: far more nodes than any consortium has


def endorsements_answer(value: Any) -> list[dict[str, Any]]:
    """A Consortium answer's `endorsements` (absent from older chains: none)."""
    answer = _map(value, "the consortium answer")
    if "endorsements" not in answer:
        return []
    entries = _list(answer["endorsements"], "the consortium's endorsements")
    if len(entries) > MAX_ENDORSEMENTS:
        raise bad(f"{len(entries)} endorsements, at most {MAX_ENDORSEMENTS}")
    out = []
    for i, entry in enumerate(entries):
        item = _map(entry, f"endorsement {i}")
        node_id = _text(item.get("node_id"), f"endorsement {i}'s node_id")
        signature = _bytes(item.get("signature"), f"endorsement {i}'s signature", 64)
        out.append({"node_id": node_id, "signature": signature})
    return out


def consortium_answer(value: Any) -> bytes:
    """A Consortium answer's signed node list (the COSE bytes a device pins)."""
    answer = _map(value, "the consortium answer")
    _text(answer.get("chain_id"), "the consortium answer's chain_id")
    _int(answer.get("epoch"), "the consortium answer's epoch", 0)
    _bool(answer.get("training"), "the consortium answer's training")
    _int(answer.get("quorum"), "the consortium answer's quorum", 1)
    _bytes(answer.get("bureau_key"), "the consortium answer's bureau_key", 32)
    for i, entry in enumerate(_list(answer.get("nodes"), "the consortium answer's nodes")):
        node = _map(entry, f"node {i}")
        _text(node.get("node_id"), f"node {i}'s node_id")
        _bytes(node.get("public_key"), f"node {i}'s public_key", 32)
    return _bytes(answer.get("consortium"), "the consortium answer's consortium")


def registration_answer(value: Any) -> Registration:
    answer = _map(value, "the registration answer")
    segments = _list(answer.get("segments"), "the registration answer's segments")
    return Registration(
        _text(answer.get("device_id"), "the registration answer's device_id", _DEVICE_ID),
        _bytes(answer.get("certificate"), "the registration answer's certificate"),
        _int(answer.get("registered_height"), "the registration answer's registered_height", 0),
        tuple(_bytes(s, f"the registration answer's segment {i}") for i, s in enumerate(segments)),
    )


def segment_answer(value: Any, device_id: str) -> bytes:
    """A SegmentAnswer for `device_id`: the bureau-signed segment."""
    answer = _map(value, "the segment answer")
    if _text(answer.get("device_id"), "the segment answer's device_id") != device_id:
        raise bad(f"a segment for device {shown(answer['device_id'])}, not {device_id}")
    _text(answer.get("code"), "the segment answer's code", _INVOICE_CODE)
    _int(answer.get("start"), "the segment answer's start", 1)
    _int(answer.get("end"), "the segment answer's end", 1)
    return _bytes(answer.get("segment"), "the segment answer's segment")


@dataclass(frozen=True, slots=True)
class Health:
    status: str
    chain_id: str
    training: bool
    height: int
    finalizing: bool
    error: str | None


def health_answer(value: Any) -> Health:
    answer = _map(value, "the health answer")
    for key in ("nodes", "reachable", "quorum", "mempool", "held"):
        _int(answer.get(key), f"the health answer's {key}", 0)
    status = _text(answer.get("status"), "the health answer's status")
    if status not in ("ok", "degraded"):
        raise bad(f"the health answer's status is {shown(status)}")
    return Health(
        status,
        _text(answer.get("chain_id"), "the health answer's chain_id"),
        _bool(answer.get("training"), "the health answer's training"),
        _int(answer.get("height"), "the health answer's height", 0),
        _bool(answer.get("finalizing"), "the health answer's finalizing"),
        _optional(answer, "error", lambda v, w: sentence(_text(v, w)), "the health answer's error"),
    )


def claimed_answer(value: Any) -> bool | None:
    """查验's answer about an invoice: claimed (True/False), or None when the chain has no
    such invoice yet (or one whose date or check code differ: not the printer's)."""
    answer = _map(value, "the verification answer")
    result = _text(answer.get("result"), "the verification answer's result")
    if result != "authentic":
        return None
    return _bool(answer.get("claimed"), "the verification answer's claimed")
