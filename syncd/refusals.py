"""What the POS is told when an invoice cannot be issued: HTTP status and a sentence.

Every device refusal maps to an HTTP status and a sentence a cashier can
act on; the device's status name travels along (`error`) for the POS
software. syncd's own conditions (port unplugged, outcome unknown, bad
JSON, reused idempotency key…) have codes of their own in `ApiCode`.

    422  the request itself is wrong (fix the sale, do not retry as is)
    409  the device is in a state an operator must change
    503  temporary: retry after the condition clears (paper, cover,
         offline limits while syncd uploads, link down)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from device.protocol.status import MESSAGES, Status


class ApiCode(StrEnum):
    BAD_JSON = "BAD_JSON"
    BAD_REQUEST = "BAD_REQUEST"
    BODY_TOO_LARGE = "BODY_TOO_LARGE"
    UNKNOWN_DEVICE = "UNKNOWN_DEVICE"
    NO_DEVICE = "NO_DEVICE"
    DEVICE_OFFLINE = "DEVICE_OFFLINE"
    OUTCOME_UNKNOWN = "OUTCOME_UNKNOWN"
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
    BAD_IDEMPOTENCY_KEY = "BAD_IDEMPOTENCY_KEY"
    NOT_FOUND = "NOT_FOUND"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    REQUEST_TIMEOUT = "REQUEST_TIMEOUT"
    TOO_MANY_CONNECTIONS = "TOO_MANY_CONNECTIONS"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    ORIGIN_REFUSED = "ORIGIN_REFUSED"
    HOST_REFUSED = "HOST_REFUSED"
    UNAUTHORIZED = "UNAUTHORIZED"
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    CREDIT_NEEDS_CONFIRMATION = "CREDIT_NEEDS_CONFIRMATION"
    CREDIT_CHECK_UNAVAILABLE = "CREDIT_CHECK_UNAVAILABLE"
    DEVICE_ROLLED_BACK = "DEVICE_ROLLED_BACK"
    DEVICE_EQUIVOCATED = "DEVICE_EQUIVOCATED"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"


@dataclass(frozen=True)
class Refusal:
    http: int
    message: str
    retry_after: int | None = None


_INVALID = 422
_STATE = 409
_LATER = 503

DEVICE_REFUSALS: dict[Status, Refusal] = {
    Status.BAD_REQUEST: Refusal(
        _INVALID, "The invoice request is malformed; check the fields sent by the till."
    ),
    Status.BODY_TOO_LARGE: Refusal(_INVALID, "The invoice is too large for the printer."),
    Status.UNKNOWN_COMMAND: Refusal(_STATE, "The printer does not support this operation."),
    Status.UNSUPPORTED_VERSION: Refusal(
        _STATE, "The printer's firmware does not speak this protocol version; call support."
    ),
    Status.REQUEST_ID_REUSED: Refusal(
        _STATE, "This request conflicts with an earlier one; start a new sale."
    ),
    Status.UNREGISTERED: Refusal(
        _STATE, "The printer is not registered with the tax bureau yet; call the administrator."
    ),
    Status.SEGMENT_EXHAUSTED: Refusal(
        _LATER,
        "The printer has no invoice numbers left; new numbers are being requested, "
        "try again in a minute.",
        60,
    ),
    Status.OFFLINE_TIME_LIMIT: Refusal(
        _LATER,
        "The printer has been offline too long and must upload its invoices first; "
        "check the shop's internet connection, then try again.",
        30,
    ),
    Status.OFFLINE_AMOUNT_LIMIT: Refusal(
        _LATER,
        "The printer has reached its offline amount limit and must upload its invoices "
        "first; check the shop's internet connection, then try again.",
        30,
    ),
    Status.STORAGE_FULL: Refusal(
        _STATE, "The printer's memory is full; call the administrator. Nothing was issued."
    ),
    Status.PAPER_OUT: Refusal(_LATER, "The printer is out of paper: load paper and try again.", 5),
    Status.COVER_OPEN: Refusal(_LATER, "The printer cover is open: close it and try again.", 5),
    Status.CLOCK_BACKWARDS: Refusal(
        _STATE, "The printer's clock is wrong (behind its last invoice); call the administrator."
    ),
    Status.JOURNAL_ROLLED_BACK: Refusal(
        _STATE,
        "The printer's memory was rolled back (lost or restored from an older copy); it "
        "refuses to issue. Nothing was issued. Call the administrator.",
    ),
    Status.CLOCK_STEP_REFUSED: Refusal(
        _STATE, "The printer refused that clock setting; nothing was changed."
    ),
    Status.ALREADY_REGISTERED: Refusal(_STATE, "The printer is already registered."),
    Status.TRAINING_MODE: Refusal(_STATE, "Not possible on a training printer."),
    Status.INVALID_INVOICE: Refusal(_INVALID, "The invoice is not valid; check the items."),
    Status.INVALID_TAX_ID: Refusal(
        _INVALID, "The buyer's tax id is wrong: check the 18-character code and type it again."
    ),
    Status.UNKNOWN_TAX_RATE: Refusal(
        _INVALID, "An item uses a tax rate this printer is not set up for; check the item."
    ),
    Status.NEGATIVE_AMOUNT: Refusal(_INVALID, "Quantities and prices must be positive."),
    Status.FIELD_TOO_LONG: Refusal(_INVALID, "A name on the invoice is too long; shorten it."),
    Status.BAD_QUANTITY: Refusal(
        _INVALID, "A quantity is not valid (a positive number, at most 3 decimals)."
    ),
    Status.TOO_MANY_ITEMS: Refusal(
        _INVALID, "An invoice needs between 1 and 100 lines; split the sale."
    ),
    Status.AMOUNT_TOO_LARGE: Refusal(_INVALID, "An amount is too large for one invoice."),
    Status.CREDIT_UNKNOWN_ORIGINAL: Refusal(
        _INVALID, "No invoice with this code and number was issued on this printer."
    ),
    Status.CREDIT_EXCEEDS_ORIGINAL: Refusal(
        _STATE, "The credit note is larger than what remains of the original invoice."
    ),
    Status.CREDIT_NOT_AN_INVOICE: Refusal(_INVALID, "Only an invoice can be credited."),
    Status.RANGE_INVALID: Refusal(_INVALID, "No such document on this printer."),
    Status.INTERNAL_ERROR: Refusal(
        _LATER, "The printer reported an internal error; nothing was issued. Try again.", 5
    ),
}

API_REFUSALS: dict[ApiCode, Refusal] = {
    ApiCode.BAD_JSON: Refusal(400, "The till sent something that is not JSON."),
    ApiCode.BAD_REQUEST: Refusal(400, "The till's request is missing or has wrong fields."),
    ApiCode.BODY_TOO_LARGE: Refusal(413, "The request is too large."),
    ApiCode.UNKNOWN_DEVICE: Refusal(404, "No printer with that name or id is attached."),
    ApiCode.NO_DEVICE: Refusal(
        503, "No printer is connected: check the printer's cable and power.", 5
    ),
    ApiCode.DEVICE_OFFLINE: Refusal(
        503, "The printer is not connected: check its cable and power, then try again.", 5
    ),
    ApiCode.OUTCOME_UNKNOWN: Refusal(
        503,
        "The printer stopped answering before confirming. Try again with the same request: "
        "you will get the same invoice, never a second one.",
        2,
    ),
    ApiCode.IDEMPOTENCY_KEY_REUSED: Refusal(
        422, "This request key was already used for a different sale; use a new key."
    ),
    ApiCode.BAD_IDEMPOTENCY_KEY: Refusal(
        400, "The Idempotency-Key header must be 1 to 200 printable characters."
    ),
    ApiCode.NOT_FOUND: Refusal(404, "No such document."),
    ApiCode.SHUTTING_DOWN: Refusal(503, "The invoice service is restarting; try again.", 2),
    ApiCode.REQUEST_TIMEOUT: Refusal(
        408, "The till sent its request too slowly; the connection was closed. Try again."
    ),
    ApiCode.TOO_MANY_CONNECTIONS: Refusal(
        503, "The invoice service has too many open connections; try again in a moment.", 1
    ),
    ApiCode.INTERNAL_ERROR: Refusal(500, "The invoice service hit an error; try again."),
    ApiCode.ORIGIN_REFUSED: Refusal(
        403, "A web page may not use the invoice service; nothing was issued."
    ),
    ApiCode.HOST_REFUSED: Refusal(
        403, "The request was addressed to another host name; nothing was issued."
    ),
    ApiCode.UNAUTHORIZED: Refusal(
        401, "The till did not send the invoice service's token; check the till's setup."
    ),
    ApiCode.UNSUPPORTED_MEDIA_TYPE: Refusal(
        415, "The till must send its request as JSON (Content-Type: application/json)."
    ),
    ApiCode.CREDIT_NEEDS_CONFIRMATION: Refusal(
        409,
        "The buyer has claimed this invoice: ask the buyer for its red-letter confirmation "
        "and send it with the credit note. Nothing was issued.",
    ),
    ApiCode.CREDIT_CHECK_UNAVAILABLE: Refusal(
        503,
        "The chain cannot be asked now whether the buyer claimed this invoice; nothing was "
        "issued. Try again when the shop is online.",
        30,
    ),
    ApiCode.DEVICE_ROLLED_BACK: Refusal(
        409,
        "The printer reports fewer documents than it had issued before (its memory was "
        "rolled back); nothing was issued. Call the administrator.",
    ),
    ApiCode.DEVICE_EQUIVOCATED: Refusal(
        409,
        "The chain reports that this printer signed two different documents with one "
        "number; nothing was issued. Call the administrator.",
    ),
    ApiCode.METHOD_NOT_ALLOWED: Refusal(
        405, "The invoice service does not take this method on this address."
    ),
}


# Every `error` code a POS answer can carry: syncd's own, and each refusal a printer can
# give under its status name. docs/pos-openapi.yaml's ErrorCode enum is checked against it.
# INTERNAL_ERROR is both: syncd's (500, a bug) and the printer's (503, nothing issued).
ERROR_CODES: tuple[str, ...] = tuple(
    dict.fromkeys([*(c.value for c in ApiCode), *(s.name for s in Status if s != Status.OK)])
)

# What a POS sends again by itself, after Retry-After, with the same Idempotency-Key (as it
# does when no answer came at all): the sale may have been issued without the answer
# reaching the till (OUTCOME_UNKNOWN), or syncd could not take it just now (printer link
# down, restarting, busy, an error of its own). The same key makes sure a retry never issues
# a second document. Every other refusal needs the sale, the printer or a person first; a
# 503 among them (paper out, offline limit) says with Retry-After when asking again is worth
# it, but that is for the cashier to decide, not a loop.
RETRY_SAME_KEY: frozenset[str] = frozenset(
    {
        ApiCode.OUTCOME_UNKNOWN,
        ApiCode.DEVICE_OFFLINE,
        ApiCode.NO_DEVICE,
        ApiCode.SHUTTING_DOWN,
        ApiCode.TOO_MANY_CONNECTIONS,
        ApiCode.REQUEST_TIMEOUT,
        ApiCode.INTERNAL_ERROR,
    }
)


def http_statuses(code: str) -> frozenset[int]:
    """The HTTP statuses an answer with this `error` code comes with (one, but for
    INTERNAL_ERROR)."""
    out = set()
    if code in ApiCode.__members__:
        out.add(API_REFUSALS[ApiCode(code)].http)
    if code in Status.__members__ and code != "OK":
        out.add(for_status(Status[code]).http)
    return frozenset(out)


def for_status(status: Status) -> Refusal:
    return DEVICE_REFUSALS.get(status) or Refusal(_STATE, MESSAGES[status])


def for_code(code: ApiCode) -> Refusal:
    return API_REFUSALS[code]
