"""The chain's API contract, shared by the chain (hostsim/chain), syncd and the device.

docs/chain-openapi.yaml is the text; this module is the part of it that
code on both sides must spell the same way: the status of one submitted
document, the error codes of a refusal or a rejection, and how a receipt
is laid out — full (it carries its block's header and the node signatures,
as a device checks it) or compact (it names its block by height, and the
answer lists each block's header and signatures once). The chain composes
compact receipts with `compact_receipt`/`attestation`; syncd turns them
back into full ones with `full_receipt` before anything else sees them.
No I/O, no checks of hostile input (syncd/answers.py does those).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any


class SubmitStatus(StrEnum):
    """One submitted document's result."""

    COMMITTED = "committed"  # in a final block now: with a receipt
    DUPLICATE = "duplicate"  # was already in a final block: the original receipt
    PENDING = "pending"  # admitted, not final yet: ask again
    HELD = "held"  # ahead of a gap in the device's counters: ask again
    REJECTED = "rejected"  # with a code and a message


ADMITTED = frozenset({SubmitStatus.COMMITTED, SubmitStatus.DUPLICATE})
UNRESOLVED = frozenset({SubmitStatus.PENDING, SubmitStatus.HELD})


class Code(StrEnum):
    """The chain's error codes: one per validation rule and per kind of bad request. The
    value travels in every 4xx body and in a rejected document's result; it never changes
    once published."""

    # Documents
    MALFORMED_DOCUMENT = "malformed_document"
    UNKNOWN_DEVICE = "unknown_device"
    DEVICE_REVOKED = "device_revoked"
    CERTIFICATE_EXPIRED = "certificate_expired"
    BAD_SIGNATURE = "bad_signature"
    PREV_HASH_MISMATCH = "prev_hash_mismatch"
    EQUIVOCATION = "equivocation"
    NUMBER_OUTSIDE_SEGMENT = "number_outside_segment"
    NUMBER_USED = "number_used"
    TOTALS_MISMATCH = "totals_mismatch"
    SELLER_MISMATCH = "seller_mismatch"
    CREDIT_UNKNOWN_ORIGINAL = "credit_unknown_original"
    CREDIT_OTHER_SELLER = "credit_other_seller"
    CREDIT_NOT_AN_INVOICE = "credit_not_an_invoice"
    CREDIT_EXCEEDS_ORIGINAL = "credit_exceeds_original"
    CREDIT_NEEDS_CONFIRMATION = "credit_needs_confirmation"  # the invoice is claimed
    CONFIRMATION_INVALID = "confirmation_invalid"  # unknown, used, another invoice's, too small
    TRAINING_NOT_ALLOWED = "training_not_allowed"
    TRAINING_ONLY = "training_only"
    CLOCK_REGRESSION = "clock_regression"
    HELD_FULL = "held_full"  # ahead of a gap, but the chain already holds its most
    # Registration and bureau
    BAD_CSR = "bad_csr"
    BAD_CERTIFICATE = "bad_certificate"
    BAD_SEGMENT = "bad_segment"
    SEGMENT_OVERLAP = "segment_overlap"
    ALREADY_REGISTERED = "already_registered"
    ENROLMENT_REQUIRED = "enrolment_required"
    ENROLMENT_INVALID = "enrolment_invalid"
    ENROLMENT_EXPIRED = "enrolment_expired"
    ENROLMENT_USED = "enrolment_used"
    ENROLMENT_TAXPAYER = "enrolment_taxpayer"
    # Signed segment requests (BAD_SIGNATURE, UNKNOWN_DEVICE and DEVICE_REVOKED as above)
    SIGNATURE_REQUIRED = "signature_required"
    REQUEST_REPLAYED = "request_replayed"
    REQUEST_STALE = "request_stale"
    SEGMENT_TOO_LARGE = "segment_too_large"
    SEGMENT_CAP = "segment_cap"
    # Verification and claims
    NOT_FOUND = "not_found"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    RATE_LIMITED = "rate_limited"
    NOT_THE_BUYER = "not_the_buyer"
    ALREADY_CLAIMED = "already_claimed"
    NOT_CLAIMABLE = "not_claimable"
    NOT_CLAIMED = "not_claimed"  # a credit confirmation for an invoice nobody claimed
    # Requests
    BAD_REQUEST = "bad_request"
    BODY_TOO_LARGE = "body_too_large"
    BATCH_TOO_LARGE = "batch_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNAVAILABLE = "unavailable"


# The chain's one spelling each of "this device is not registered" and "this number is in
# no segment the chain knows for the device": registering again (training devices) can fix
# both.
UNKNOWN_DEVICE = Code.UNKNOWN_DEVICE
UNKNOWN_SEGMENT = Code.NUMBER_OUTSIDE_SEGMENT

# The parts of a receipt, in the order the chain writes them.
RECEIPT_PROOF = ("doc_hash", "position", "proof")
RECEIPT_BLOCK = ("header", "signatures")
RECEIPT_DOCUMENT = ("device_id", "counter")


def receipt(
    doc_hash: bytes,
    position: int,
    proof: Sequence[bytes],
    block: Mapping[str, Any],
    device_id: str | None = None,
    counter: int | None = None,
) -> dict[str, Any]:
    """A full receipt: the document's place in the block, the block's `attestation`, and
    (for a device's document) whose document it is."""
    out: dict[str, Any] = {"doc_hash": doc_hash, "position": position, "proof": list(proof)}
    out.update((k, block[k]) for k in RECEIPT_BLOCK)
    if device_id is not None:
        out["device_id"] = device_id
        out["counter"] = counter
    return out


def attestation(header: Mapping[str, Any], signatures: Sequence[Any]) -> dict[str, Any]:
    """What compact receipts leave out, listed once per block in an answer."""
    return {"header": header, "signatures": signatures}


def compact_receipt(full: Mapping[str, Any]) -> dict[str, Any]:
    """A full receipt naming its block by height instead of carrying the attestation."""
    out: dict[str, Any] = {k: full[k] for k in RECEIPT_PROOF}
    out["height"] = full["header"]["height"]
    out.update((k, full[k]) for k in RECEIPT_DOCUMENT if k in full)
    return out


def is_compact(value: Mapping[str, Any]) -> bool:
    return "height" in value


def full_receipt(compact: Mapping[str, Any], block: Mapping[str, Any]) -> dict[str, Any]:
    """A compact receipt with its block's `attestation` put back: the receipt the chain
    gives in full, field for field."""
    out: dict[str, Any] = {k: compact[k] for k in RECEIPT_PROOF if k in compact}
    out.update((k, block[k]) for k in RECEIPT_BLOCK)
    out.update((k, compact[k]) for k in RECEIPT_DOCUMENT if k in compact)
    return out
