"""What syncd needs from the chain, as one narrow interface.

The sync engine and the registration flow talk to `ChainPort`; `adapter.py`
fits the chain client (`syncd/chain_client.py`) to it, and tests plug in
an in-memory chain. Two errors matter to callers:

- `ChainDown`: no usable answer (unreachable, 5xx, timeout). Retry later.
  For a submission the outcome is unknown — harmless, since submitting the
  same documents again returns their original receipts.
- `ChainRefused`: the chain answered no, with a code; retrying the same
  thing will not help.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class ChainDown(ConnectionError):
    def __init__(self, message: str, code: str = "UNAVAILABLE") -> None:
        self.code = code
        super().__init__(message)


class ChainRefused(Exception):
    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


class ChainPort(Protocol):
    @property
    def url(self) -> str:
        """The node currently in use (for status)."""
        ...

    async def submit(self, documents: Sequence[bytes]) -> list[Any]:
        """One result per document, in order: `.status`, `.receipt`, `.code`, `.message`."""
        ...

    async def consortium(self) -> bytes:
        """The bureau-signed node list (COSE bytes) devices check receipts against."""
        ...

    async def register(
        self,
        *,
        csr: bytes | None = None,
        certificate: bytes | None = None,
        segments: Sequence[bytes] = (),
    ) -> dict[str, Any]:
        """Register a device: from a CSR (the bureau returns a certificate) or, for a
        training device, its self-issued certificate and segments."""
        ...

    async def allocate_segment(self, device_id: str, count: int) -> bytes:
        """A new bureau-signed number segment for the device."""
        ...

    async def record_segment(self, device_id: str, raw: bytes) -> None:
        """Tell the chain about a segment the device holds (training devices)."""
        ...

    async def close(self) -> None: ...
