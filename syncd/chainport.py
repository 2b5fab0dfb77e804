"""What syncd needs from the chain, as one narrow interface.

The sync engine and the registration flow talk to `ChainGateway`; the chain
client (`syncd/chain_client.py`) implements it over HTTP, and tests plug in
an in-memory chain. Its answers are typed values (below), already checked
against the chain's API (`syncd/answers.py`), so callers never meet a
malformed one. Two errors matter to callers:

- `ChainDown`: no usable answer (unreachable, 5xx, timeout, or an answer
  that is not what the API defines: code `BAD_ANSWER`). Retry later.
  For a submission the outcome is unknown — harmless, since submitting the
  same documents again returns their original receipts.
- `ChainRefused`: the chain answered no, with a code; retrying the same
  thing will not help.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from device.protocol.chainapi import SubmitStatus

__all__ = [
    "ChainDown",
    "ChainGateway",
    "ChainRefused",
    "ConsortiumOffer",
    "Registration",
    "SubmitResult",
    "SubmitStatus",
]


class ChainDown(ConnectionError):
    def __init__(self, message: str, code: str = "UNAVAILABLE") -> None:
        self.code = code
        super().__init__(message)


class ChainRefused(Exception):
    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """One document's result. `receipt` (the full receipt, as the device checks it) is
    there for committed and duplicate; `code` and `message` for rejected."""

    status: SubmitStatus
    receipt: dict[str, Any] | None = None
    code: str | None = None
    message: str | None = None
    counter: int | None = None


@dataclass(frozen=True, slots=True)
class Registration:
    device_id: str
    certificate: bytes
    registered_height: int
    segments: tuple[bytes, ...]


@dataclass(frozen=True)
class ConsortiumOffer:
    consortium: bytes
    endorsements: tuple[dict[str, Any], ...] = ()


class ChainGateway(Protocol):
    @property
    def url(self) -> str:
        """The node currently in use (for status)."""
        ...

    async def submit(self, documents: Sequence[bytes]) -> list[SubmitResult]:
        """One result per document, in order."""
        ...

    async def consortium(self) -> bytes:
        """The bureau-signed node list (COSE bytes) devices check receipts against."""
        ...

    async def consortium_offer(self) -> ConsortiumOffer:
        """The node list with the previous epoch's endorsements of it (one answer)."""
        ...

    async def register(
        self,
        *,
        csr: bytes | None = None,
        certificate: bytes | None = None,
        segments: Sequence[bytes] = (),
        enrolment_code: str | None = None,
    ) -> Registration:
        """Register a device: from a CSR (the bureau returns a certificate; outside
        training only with the bureau's enrolment code for the taxpayer) or, for a
        training device, its self-issued certificate and segments."""
        ...

    async def allocate_segment(self, device_id: str, request: bytes) -> bytes:
        """A new bureau-signed number segment for the device, on a segment request the
        device signed (device command SEGMENT_REQUEST)."""
        ...

    async def record_segment(self, device_id: str, raw: bytes) -> None:
        """Tell the chain about a segment the device holds (training devices)."""
        ...

    async def invoice_claimed(
        self, code: str, number: str, date: str, check_code: str
    ) -> bool | None:
        """Whether a buyer has claimed the invoice (None: not on the chain), asked the way
        a holder of the receipt asks (查验: date and the check code's last digits)."""
        ...

    async def close(self) -> None: ...
