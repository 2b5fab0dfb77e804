"""Device status codes: one byte on the wire, one exception class in code.

Every refusal a device can give has its own code here, a stable symbolic
name and a sentence a person (a cashier, an integrator) understands. The
numeric value is what travels in the response frame's status byte; values
are never reused or renumbered.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

from device.errors import Refused
from device.protocol.untrusted import shown


class Status(IntEnum):
    OK = 0x00

    # Request and protocol problems: the host sent something wrong.
    BAD_REQUEST = 0x10
    UNKNOWN_COMMAND = 0x11
    UNSUPPORTED_VERSION = 0x12
    REQUEST_ID_REUSED = 0x13
    BODY_TOO_LARGE = 0x14

    # Device state: issuing is refused until the condition is cleared.
    UNREGISTERED = 0x20
    SEGMENT_EXHAUSTED = 0x21
    OFFLINE_TIME_LIMIT = 0x22
    OFFLINE_AMOUNT_LIMIT = 0x23
    STORAGE_FULL = 0x24
    PAPER_OUT = 0x25
    COVER_OPEN = 0x26
    CLOCK_BACKWARDS = 0x27
    ALREADY_REGISTERED = 0x28
    TRAINING_MODE = 0x29
    JOURNAL_ROLLED_BACK = 0x2A
    CLOCK_STEP_REFUSED = 0x2B

    # Invoice content: the request itself is invalid.
    INVALID_INVOICE = 0x30
    INVALID_TAX_ID = 0x31
    UNKNOWN_TAX_RATE = 0x32
    NEGATIVE_AMOUNT = 0x33
    FIELD_TOO_LONG = 0x34
    BAD_QUANTITY = 0x35
    TOO_MANY_ITEMS = 0x36
    AMOUNT_TOO_LARGE = 0x37

    # Credit notes.
    CREDIT_UNKNOWN_ORIGINAL = 0x40
    CREDIT_EXCEEDS_ORIGINAL = 0x41
    CREDIT_NOT_AN_INVOICE = 0x42

    # Trust objects from the tax bureau and the chain.
    CERT_INVALID = 0x50
    SEGMENT_INVALID = 0x51
    RECEIPT_INVALID = 0x52
    RECEIPT_MISMATCH = 0x53
    CONSORTIUM_INVALID = 0x54

    # Journal queries.
    RANGE_INVALID = 0x60

    INTERNAL_ERROR = 0x7F


MESSAGES: dict[Status, str] = {
    Status.OK: "OK",
    Status.BAD_REQUEST: "The request is malformed: its body is not the CBOR this command expects.",
    Status.UNKNOWN_COMMAND: "The device does not know this command.",
    Status.UNSUPPORTED_VERSION: "The device does not speak this protocol version.",
    Status.REQUEST_ID_REUSED: (
        "This request id was already used for a different request; send it with a new id."
    ),
    Status.BODY_TOO_LARGE: "The request body is larger than the device accepts.",
    Status.UNREGISTERED: (
        "The device is not registered with the tax bureau, or has no certificate yet."
    ),
    Status.SEGMENT_EXHAUSTED: (
        "No invoice numbers left: the device needs a new number segment from the tax bureau."
    ),
    Status.OFFLINE_TIME_LIMIT: (
        "Offline too long: the device must upload its invoices to the chain before it can "
        "issue more."
    ),
    Status.OFFLINE_AMOUNT_LIMIT: (
        "Offline amount limit reached: the device must upload its invoices to the chain "
        "before it can issue more."
    ),
    Status.STORAGE_FULL: "The device journal is full: nothing was written.",
    Status.PAPER_OUT: "The printer is out of paper: load paper and try again.",
    Status.COVER_OPEN: "The printer cover is open: close it and try again.",
    Status.CLOCK_BACKWARDS: (
        "The clock moved backwards: the device refuses to issue or set an earlier time."
    ),
    Status.ALREADY_REGISTERED: "The device already holds a certificate.",
    Status.TRAINING_MODE: "This operation is not allowed in training mode.",
    Status.JOURNAL_ROLLED_BACK: (
        "The journal is behind the device's anchor (lost or restored from an older copy): "
        "the device refuses to issue until the journal is restored or the device retired."
    ),
    Status.CLOCK_STEP_REFUSED: (
        "The time is past the certificate's validity or a larger forward step than the "
        "device accepts; nothing was changed."
    ),
    Status.INVALID_INVOICE: "The invoice is invalid.",
    Status.INVALID_TAX_ID: (
        "A tax id is not a valid 18-character unified social credit code (check character)."
    ),
    Status.UNKNOWN_TAX_RATE: "A line uses a tax rate the device is not configured for.",
    Status.NEGATIVE_AMOUNT: "Quantities and prices must be positive.",
    Status.FIELD_TOO_LONG: "A text field is longer than the device accepts.",
    Status.BAD_QUANTITY: (
        "A quantity is not a positive decimal string with at most 3 decimal places."
    ),
    Status.TOO_MANY_ITEMS: "The invoice has no lines or more lines than the device accepts.",
    Status.AMOUNT_TOO_LARGE: "An amount is larger than the device accepts.",
    Status.CREDIT_UNKNOWN_ORIGINAL: (
        "The credit note refers to an invoice this device did not issue."
    ),
    Status.CREDIT_EXCEEDS_ORIGINAL: (
        "The credit note is larger than what remains of the original invoice."
    ),
    Status.CREDIT_NOT_AN_INVOICE: "A credit note can only refer to an invoice.",
    Status.CERT_INVALID: (
        "The certificate is not signed by the tax bureau or does not fit this device."
    ),
    Status.SEGMENT_INVALID: (
        "The number segment is not signed by the tax bureau, not for this device, or overlaps."
    ),
    Status.RECEIPT_INVALID: (
        "The chain receipt is not signed by a quorum of certified consortium nodes."
    ),
    Status.RECEIPT_MISMATCH: (
        "The chain receipt does not match a document in this device's journal."
    ),
    Status.CONSORTIUM_INVALID: (
        "The consortium key list is not signed by the tax bureau or is older than the one held."
    ),
    Status.RANGE_INVALID: "The requested journal range is invalid.",
    Status.INTERNAL_ERROR: "The device hit an internal error; nothing was written.",
}


MAX_DETAIL = 400  # characters: a refusal's detail, whatever went into it
MAX_INFO = 16  # entries of `info` kept, each a short key and a scalar


class DeviceError(Refused):
    """A refusal with a stable status code (the `Refused` of device.errors).

    `detail` adds what is specific to this refusal (which field, which
    limit); the status message stays the same for every occurrence so hosts
    can show it to a person. Both `detail` and `info` are bounded here,
    whatever the caller built them from: sinks quote input through
    `untrusted.shown`, and this is the net under them, so that no refusal
    can outgrow its response frame or put an invisible character on a screen.
    """

    def __init__(self, status: Status, detail: str = "", **info: Any) -> None:
        self.status = status
        self.detail = bounded_detail(detail)
        self.info = bounded_info(info)
        super().__init__(self.text)

    @property
    def message(self) -> str:
        return MESSAGES[self.status]

    @property
    def text(self) -> str:
        if self.detail:
            return f"{self.status.name}: {self.message} ({self.detail})"
        return f"{self.status.name}: {self.message}"

    def to_body(self) -> dict[str, Any]:
        """The CBOR body of an error response."""
        body: dict[str, Any] = {"error": self.status.name, "message": self.message}
        if self.detail:
            body["detail"] = self.detail
        if self.info:
            body["info"] = self.info
        return body

    @classmethod
    def from_response(cls, status: int, body: Any) -> DeviceError:
        try:
            code = Status(status)
        except ValueError:
            return cls(Status.INTERNAL_ERROR, f"unknown status 0x{status:02x}")
        detail = ""
        info: dict[str, Any] = {}
        if isinstance(body, dict):
            raw_detail = body.get("detail", "")
            detail = raw_detail if isinstance(raw_detail, str) else shown(raw_detail)
            raw = body.get("info")
            if isinstance(raw, dict):
                info = raw
        # Not cls(code, detail, **info): the map comes from the answer, and a key such as
        # "status" or "detail" would collide with the constructor's own arguments.
        error = cls(code, detail)
        error.info = bounded_info(info)
        return error


def internal_error(exc: BaseException) -> DeviceError:
    """The refusal for a bug met while handling one request: short, whatever `exc` says."""
    return DeviceError(Status.INTERNAL_ERROR, f"{type(exc).__name__}: {shown(str(exc), 80)}")


def bounded_detail(detail: object) -> str:
    """`detail` as a refusal may carry it: at most MAX_DETAIL visible characters."""
    if not isinstance(detail, str):
        return shown(detail)
    if len(detail) <= MAX_DETAIL and detail.isascii() and detail.isprintable():
        return detail  # the usual case, built by the device from its own words and numbers
    escaped = shown(detail, MAX_DETAIL)[1:-1]  # without shown's quotes
    # Escapes make an invisible character up to ten visible ones: cut again after them.
    return escaped if len(escaped) <= MAX_DETAIL else escaped[:MAX_DETAIL] + "…"


def bounded_info(info: dict[str, Any]) -> dict[str, Any]:
    """The first MAX_INFO entries of `info` with short text keys, values made scalar and short."""
    out: dict[str, Any] = {}
    for key, value in info.items():
        if len(out) >= MAX_INFO:
            break
        if not isinstance(key, str) or len(key) > 40 or not key.isidentifier():
            continue
        if isinstance(value, bool | None) or (isinstance(value, int) and -(2**63) <= value < 2**64):
            out[key] = value
        else:
            out[key] = bounded_detail(value) if isinstance(value, str) else shown(value)
    return out
