"""Validation rules for a submitted document, without I/O.

The engine decides where a document stands in its device's sequence
(duplicate, next, ahead of a gap, or a second document for a used
counter); these functions decide whether the content is acceptable. Each
rule raises `ChainError` with its own code, so a rejection names exactly
what was wrong. They read state through small records and callables and
change nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from device.protocol import trust
from device.protocol.document import ZERO_HASH, Document, Kind
from device.protocol.invoice import recheck_lines
from device.protocol.status import DeviceError
from device.protocol.untrusted import shown
from hostsim.chain.errors import ChainError, Code


@dataclass(slots=True)
class DeviceRecord:
    """A registered device as the chain knows it (committed state plus accepted pending)."""

    certificate: trust.DeviceCert
    registered_height: int
    segments: list[trust.Segment] = field(default_factory=list)
    revoked_height: int | None = None
    revoked_reason: str | None = None
    last_counter: int = 0
    last_hash: bytes = ZERO_HASH
    last_issued_at: str = ""

    @property
    def device_id(self) -> str:
        return self.certificate.device_id

    @property
    def public_key(self) -> bytes:
        return self.certificate.public_key

    @property
    def tax_id(self) -> str:
        return self.certificate.taxpayer["tax_id"]


@dataclass(frozen=True, slots=True)
class Original:
    """The invoice a credit note refers to, with what is already credited against it."""

    kind: str
    seller_tax_id: str
    total: int
    credited: int  # positive fen, committed and accepted-pending credits together
    claimed: bool = False  # a buyer claimed it (committed or pending): crediting needs consent


@dataclass(frozen=True, slots=True)
class Confirmation:
    """A buyer's red-letter confirmation (红字信息确认单): consent to credit up to `amount`
    of one claimed invoice, once."""

    id: str
    code: str
    number: str
    amount: int
    used: bool  # named by a committed or accepted-pending credit note


def _no_confirmation(confirmation_id: str) -> Confirmation | None:
    return None


def registered(doc: Document, device: DeviceRecord | None) -> DeviceRecord:
    """The device is known and not revoked (checked before its signature)."""
    if device is None:
        raise ChainError(
            Code.UNKNOWN_DEVICE, f"device {doc.device_id} is not registered on this chain"
        )
    if device.revoked_height is not None:
        raise ChainError(
            Code.DEVICE_REVOKED,
            f"device {doc.device_id} was revoked at block {device.revoked_height}"
            f" ({device.revoked_reason or 'no reason given'})",
        )
    return device


def admission(doc: Document, device: DeviceRecord, chain_training: bool) -> None:
    """Rules that hold for a signed document whatever its place in the sequence."""
    if doc.training and not chain_training:
        raise ChainError(
            Code.TRAINING_NOT_ALLOWED,
            "a training document is not an invoice; this chain was not started with --training",
        )
    if doc.training != device.certificate.training:
        raise ChainError(
            Code.TRAINING_ONLY if chain_training else Code.TRAINING_NOT_ALLOWED,
            "the document's training flag differs from the device certificate's",
        )
    issued_at = str(doc.payload["issued_at"])
    cert = device.certificate
    if not cert.issued_at <= issued_at <= cert.not_after:
        raise ChainError(
            Code.CERTIFICATE_EXPIRED,
            f"issued {issued_at}, outside the certificate's validity"
            f" {cert.issued_at} to {cert.not_after}",
        )
    seller = doc.payload["seller"]
    if seller.get("tax_id") != device.tax_id:
        raise ChainError(
            Code.SELLER_MISMATCH,
            f"seller {shown(seller.get('tax_id'))} is not the certified taxpayer {device.tax_id}",
        )


def succession(doc: Document, device: DeviceRecord) -> None:
    """The document continues its device's hash chain (its counter is last + 1)."""
    if doc.prev_hash != device.last_hash:
        raise ChainError(
            Code.PREV_HASH_MISMATCH,
            f"document {doc.counter}: prev_hash {doc.prev_hash.hex()[:16]}… is not the hash"
            f" of document {device.last_counter} ({device.last_hash.hex()[:16]}…)",
        )
    issued_at = str(doc.payload["issued_at"])
    if issued_at < device.last_issued_at:
        raise ChainError(
            Code.CLOCK_REGRESSION,
            f"document {doc.counter} issued {issued_at}, before its predecessor"
            f" ({device.last_issued_at})",
        )


def numbering(doc: Document, device: DeviceRecord, holder: bytes | None) -> None:
    """`holder` is the hash of the document already using this code/number, if any."""
    code, number = doc.code, doc.number
    if code is None or number is None:
        return
    # check_shape admitted only 8 ASCII digits, so int() reads exactly what is printed
    if not any(seg.contains(code, int(number)) for seg in device.segments):
        raise ChainError(
            Code.NUMBER_OUTSIDE_SEGMENT,
            f"{code}/{number} is not inside a segment allocated to {device.device_id}",
        )
    if holder is not None and holder != doc.hash:
        raise ChainError(
            Code.NUMBER_USED,
            f"{code}/{number} is already used by document {holder.hex()[:16]}…",
            existing_hash=holder.hex(),
        )


def check_totals(doc: Document, rates: frozenset[int]) -> None:
    kind = doc.kind
    if kind not in (Kind.INVOICE, Kind.CREDIT):
        return
    try:
        found = recheck_lines(doc.payload["items"], rates, credit=kind == Kind.CREDIT)
    except DeviceError as exc:
        raise ChainError(Code.TOTALS_MISMATCH, exc.detail) from None
    amount, tax = doc.payload["amount"], doc.payload["tax"]
    if (found.amount, found.tax) != (amount, tax):
        raise ChainError(
            Code.TOTALS_MISMATCH,
            f"lines add up to amount {found.amount} and tax {found.tax},"
            f" the document says {amount} and {tax}",
        )
    if (kind == Kind.INVOICE and doc.total < 0) or (kind == Kind.CREDIT and doc.total > 0):
        raise ChainError(Code.TOTALS_MISMATCH, f"a {kind.value} cannot total {doc.total}")


def credit(
    doc: Document,
    original: Original | None,
    confirmation: Callable[[str], Confirmation | None] = _no_confirmation,
) -> None:
    if doc.kind != Kind.CREDIT:
        return
    ref = doc.payload["refers_to"]
    name = f"{ref['code']}/{ref['number']}"
    if original is None:
        raise ChainError(Code.CREDIT_UNKNOWN_ORIGINAL, f"no invoice {name} on the chain")
    if original.kind != Kind.INVOICE:
        raise ChainError(Code.CREDIT_NOT_AN_INVOICE, f"{name} is a {original.kind}")
    if original.seller_tax_id != doc.payload["seller"].get("tax_id"):
        raise ChainError(Code.CREDIT_OTHER_SELLER, f"{name} was issued by another seller")
    remaining = original.total - original.credited
    if -doc.total > remaining:
        raise ChainError(
            Code.CREDIT_EXCEEDS_ORIGINAL,
            f"credit of {-doc.total} fen exceeds the {remaining} fen remaining on {name}",
        )
    confirmed(doc, original, name, confirmation)


def confirmed(
    doc: Document,
    original: Original,
    name: str,
    confirmation: Callable[[str], Confirmation | None],
) -> None:
    """A claimed invoice is credited only with its buyer's confirmation, used once: else
    the seller could reverse a sale whose deduction the buyer has already taken."""
    rc = doc.payload.get("confirmation")
    if rc is None:
        if original.claimed:
            raise ChainError(
                Code.CREDIT_NEEDS_CONFIRMATION,
                f"{name} was claimed by its buyer: a credit note needs the buyer's"
                " confirmation (POST /v1/invoices/{code}/{number}/credit-confirmations)",
            )
        return
    found = confirmation(str(rc))
    ref = doc.payload["refers_to"]
    if found is None:
        problem = "was not issued by this chain"
    elif (found.code, found.number) != (ref["code"], ref["number"]):
        problem = f"is for {found.code}/{found.number}, not {name}"
    elif found.used:
        problem = "was already used by another credit note"
    elif found.amount < -doc.total:
        problem = f"covers {found.amount} fen, the credit is {-doc.total} fen"
    else:
        return
    raise ChainError(Code.CONFIRMATION_INVALID, f"confirmation {rc} {problem}")


def check_next(
    doc: Document,
    device: DeviceRecord,
    rates: frozenset[int],
    number_holder: Callable[[str, str], bytes | None],
    original: Callable[[str, str], Original | None],
    totals: ChainError | bool | None = True,
    confirmation: Callable[[str], Confirmation | None] = _no_confirmation,
) -> None:
    """All content rules for the document that comes next for its device.

    `totals` is True to check the line totals here, or the verdict of an
    earlier check (None: they were right), raised in its place in the order.
    """
    succession(doc, device)
    if doc.code is not None and doc.number is not None:
        numbering(doc, device, number_holder(doc.code, doc.number))
    if totals is True:
        check_totals(doc, rates)
    elif isinstance(totals, ChainError):
        raise totals
    if doc.kind == Kind.CREDIT:
        ref = doc.payload["refers_to"]
        credit(doc, original(str(ref["code"]), str(ref["number"])), confirmation)
