"""The chain's refusals: the HTTP status of each error code, and `ChainError`.

The codes themselves are part of the API contract (device/protocol/chainapi.py,
shared with syncd); the string value travels in every 4xx body as
{"error": {"code", "message"}} and in a rejected document's result.
"""

from __future__ import annotations

from device.protocol.chainapi import Code

__all__ = ["STATUS", "ChainError", "Code"]


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
