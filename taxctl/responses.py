"""What a Printer answers, typed: each built from a device answer after checking it.

A device answer that is not what docs/PROTOCOL.md defines (a document that does not parse,
does not verify with the device's key, or does not match the fields around it) raises
UnreadableResponse, an OutcomeUnknown: the device may have done the work, so the request
is sent again with the same request id rather than treated as refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from device.client import UnreadableResponse
from device.protocol import qr
from device.protocol.document import Document, DocumentError, Kind, parse_document
from device.protocol.untrusted import shown
from syncd import device_answers

# The fields of a DocumentResponse that repeat the signed document: they must agree.
_REPEATED = ("counter", "code", "number", "total", "check_code", "issued_at", "training")


@dataclass(frozen=True, slots=True)
class DocumentResponse:
    """A signed document from ISSUE, CREDIT, X_REPORT, Z_REPORT or a reprint.

    `document` is the parsed COSE_Sign1, its signature checked with the device's key;
    `qr` is the device-signed verification payload to print (None for a report);
    `synced` is set for a reprint only (whether the chain has it already);
    `request_id` is the id it was issued under (send it again to get the same answer).
    """

    document: Document
    qr: str | None
    request_id: int
    synced: bool | None = None

    @property
    def counter(self) -> int:
        return self.document.counter

    @property
    def kind(self) -> Kind:
        return self.document.kind

    @property
    def code(self) -> str | None:
        return self.document.code

    @property
    def number(self) -> str | None:
        return self.document.number

    @property
    def total(self) -> int:
        """Fen (0.01 yuan), tax included; negative for a credit note."""
        return self.document.total

    @property
    def check_code(self) -> str:
        return self.document.check_code

    @property
    def issued_at(self) -> str:
        return str(self.document.payload["issued_at"])

    @property
    def training(self) -> bool:
        return self.document.training

    @property
    def cose(self) -> bytes:
        """The signed document's bytes, as the chain stores them."""
        return self.document.raw


def document_response(answer: dict[str, Any], public_key: bytes, rid: int) -> DocumentResponse:
    """Check a DocumentResponse body against the document it carries."""
    try:
        document = parse_document(answer["document"])
    except (DocumentError, KeyError, TypeError) as exc:
        raise _unreadable(rid, f"its document does not parse ({shown(str(exc))})") from None
    if not document.verify(public_key):
        raise _unreadable(rid, "its document does not verify with the device's key")
    for key in _REPEATED:
        if answer.get(key) != document.payload.get(key):
            raise _unreadable(rid, f"its {key} is not the document's")
    text = answer.get("qr")
    signed = qr.device_payload(text, document.payload, document.hash, public_key)
    if text is not None and signed is None:
        raise _unreadable(rid, "its QR payload does not name this document")
    synced = answer.get("synced")
    if synced is not None and type(synced) is not bool:
        raise _unreadable(rid, "its synced flag is not true or false")
    return DocumentResponse(document, signed, rid, synced)


def _unreadable(rid: int, why: str) -> UnreadableResponse:
    return UnreadableResponse(
        f"the device's answer to request {rid:#x} cannot be used: {why}; its outcome is unknown"
    )


@dataclass(frozen=True, slots=True)
class PrinterInfo:
    """Who the printer is, from its HELLO and INFO answers (`raw` holds all of INFO)."""

    device_id: str
    firmware: str
    protocol: int
    public_key: bytes
    training: bool
    registered: bool
    tax_rates: tuple[int, ...]
    max_in_flight: int  # what the device accepts at once, as it announced in HELLO
    raw: dict[str, Any] = field(repr=False)


def printer_info(hello: dict[str, Any], info: dict[str, Any]) -> PrinterInfo:
    device_answers.hello_answer(hello)
    device_answers.info_answer(info)
    rates = info.get("tax_rates")
    announced = hello.get("max_in_flight")
    return PrinterInfo(
        device_id=str(info["device_id"]),
        firmware=str(info.get("firmware", "")),
        protocol=int(hello["version"]),
        public_key=bytes(info["public_key"]),
        training=bool(info["training"]),
        registered=bool(info["registered"]),
        tax_rates=tuple(r for r in rates if type(r) is int) if isinstance(rates, list) else (),
        max_in_flight=announced if type(announced) is int else 0,
        raw=info,
    )


@dataclass(frozen=True, slots=True)
class PrinterStatus:
    """The printer's STATUS answer: whether it can issue, and its counters."""

    can_issue: bool
    blocking: tuple[str, ...]  # the status names an ISSUE would be refused with now
    counter: int  # documents issued
    synced_through: int  # documents the chain has
    numbers_left: int
    raw: dict[str, Any] = field(repr=False)

    @property
    def unsynced(self) -> int:
        return self.counter - self.synced_through


def printer_status(answer: dict[str, Any]) -> PrinterStatus:
    device_answers.status_answer(answer)
    return PrinterStatus(
        can_issue=answer["can_issue"],
        blocking=tuple(answer["blocking"]),
        counter=answer["counter"],
        synced_through=answer["synced_through"],
        numbers_left=answer["numbers_left"],
        raw=answer,
    )
