"""Chain error codes: one per validation rule and per kind of bad request.

The string value travels in every 4xx body as {"error": {"code", "message"}}
and in a rejected document's result; it never changes once published.
"""

from __future__ import annotations

from enum import StrEnum


class Code(StrEnum):
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


STATUS: dict[Code, int] = {
    Code.UNKNOWN_DEVICE: 404,
    Code.NOT_FOUND: 404,
    Code.UNAUTHORIZED: 401,
    Code.FORBIDDEN: 403,
    Code.RATE_LIMITED: 429,
    Code.NOT_THE_BUYER: 403,
    Code.ALREADY_CLAIMED: 409,
    Code.ALREADY_REGISTERED: 409,
    Code.SEGMENT_OVERLAP: 409,
    Code.NOT_CLAIMABLE: 409,
    Code.ENROLMENT_REQUIRED: 403,
    Code.ENROLMENT_INVALID: 403,
    Code.ENROLMENT_EXPIRED: 403,
    Code.ENROLMENT_USED: 403,
    Code.ENROLMENT_TAXPAYER: 403,
    Code.SIGNATURE_REQUIRED: 403,
    Code.BAD_SIGNATURE: 403,
    Code.DEVICE_REVOKED: 403,
    Code.REQUEST_REPLAYED: 409,
    Code.SEGMENT_CAP: 409,
    Code.NOT_CLAIMED: 409,
    Code.BODY_TOO_LARGE: 413,
    Code.BATCH_TOO_LARGE: 413,
    Code.UNSUPPORTED_MEDIA_TYPE: 415,
    Code.METHOD_NOT_ALLOWED: 405,
    Code.UNAVAILABLE: 503,
}


MAX_MESSAGE_CHARS = 400


class ChainError(Exception):
    """A refusal with a stable code and a sentence; `extra` goes into the error body."""

    def __init__(self, code: Code, message: str, **extra: object) -> None:
        # A last bound for messages that carry a library's or the device code's words (a
        # malformed document's reason can quote a field of it): an answer never grows
        # with the input, and 10,000 remembered rejections stay small.
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[:MAX_MESSAGE_CHARS] + "…"
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra

    @property
    def http_status(self) -> int:
        return STATUS.get(self.code, 400)

    def body(self) -> dict[str, object]:
        return {"error": {"code": self.code.value, "message": self.message, **self.extra}}
