"""The stateless part of validating a document: decode, signature, line totals.

None of it depends on the chain's state, so it runs in worker processes
while the event loop does the ordered, stateful admission; a batch of 500
costs the loop only what depends on the tip. The signing key is found from
the COSE key id (the device id), read straight from the fixed envelope
prefix every document has, so the worker needs no view of the registry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from device.protocol.document import Document, DocumentError, parse_document
from hostsim.chain import rules
from hostsim.chain.errors import ChainError

# tag 18, array(4), protected bstr(3) {1: -8}, unprotected {4: bstr(14)}
_ENVELOPE_PREFIX = b"\xd2\x84\x43\xa1\x01\x27\xa1\x04\x4e"
_KID_END = len(_ENVELOPE_PREFIX) + 14


@dataclass(slots=True)
class Checked:
    doc: Document | None
    malformed: str | None = None
    signature_ok: bool | None = None  # None: not checked (device unknown when sent)
    totals_error: ChainError | None = None

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # A plain tuple: the dataclass default looks its fields up on every pickle.
        return (Checked, (self.doc, self.malformed, self.signature_ok, self.totals_error))


def kid_of(raw: bytes) -> str | None:
    if raw[: len(_ENVELOPE_PREFIX)] != _ENVELOPE_PREFIX:
        return None
    try:
        return raw[len(_ENVELOPE_PREFIX) : _KID_END].decode("ascii")
    except UnicodeDecodeError:
        return None


def check_chunk(
    items: Sequence[tuple[bytes, bytes | None]], rates: frozenset[int]
) -> list[Checked]:
    out = []
    for raw, key in items:
        try:
            doc = parse_document(raw)
        except DocumentError as exc:
            out.append(Checked(None, str(exc)))
            continue
        signature_ok = doc.verify(key) if key is not None else None
        totals_error = None
        try:
            rules.check_totals(doc, rates)
        except ChainError as exc:
            totals_error = exc
        out.append(Checked(doc, None, signature_ok, totals_error))
    return out


KeyLookup = Callable[[str], bytes | None]

PR_SET_PDEATHSIG = 1


def worker_init() -> None:
    """In each worker: die with the chain process, even if it is killed with SIGKILL."""
    import ctypes
    import ctypes.util
    import signal

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the pool's own EOF handling remains
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the chain to handle


def warm_up() -> int:
    """A no-op a worker runs once at start, so it is ready before the first batch."""
    return 0


def with_keys(raws: Sequence[bytes], key_of: KeyLookup) -> list[tuple[bytes, bytes | None]]:
    out = []
    for raw in raws:
        kid = kid_of(raw)
        out.append((raw, key_of(kid) if kid is not None else None))
    return out
