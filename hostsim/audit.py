"""Compare a printer's journal with what the chain holds for it: lost, duplicated, altered.

The journal is the truth of what the printer signed; the chain must hold
each of those documents once, byte for byte, and nothing else under that
device. `compare` is pure; `chain_documents` pages through the chain API
with the auditor's credential (device ledgers are not public).
"""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from device.protocol.document import DocumentError, parse_document
from hostsim.bureau import ADMIN_TOKEN_FILE

PAGE = 1000


@dataclass
class DeviceAudit:
    device_id: str
    journal: int
    on_chain: int
    lost: list[int] = field(default_factory=list)  # in the journal, not on the chain
    duplicated: list[int] = field(default_factory=list)  # on the chain more than once
    altered: list[int] = field(default_factory=list)  # on the chain with other bytes
    unknown: list[int] = field(default_factory=list)  # on the chain, never in the journal
    broken: list[str] = field(default_factory=list)  # journal gaps, bad links or signatures

    @property
    def clean(self) -> bool:
        return not (self.lost or self.duplicated or self.altered or self.unknown or self.broken)


def compare(
    device_id: str,
    journal: Sequence[tuple[int, bytes]],
    chain: Sequence[tuple[int, bytes]],
    public_key: bytes | None = None,
) -> DeviceAudit:
    """`journal` and `chain` are (counter, COSE_Sign1 bytes) pairs, in any order."""
    audit = DeviceAudit(device_id, len(journal), len(chain))
    signed = dict(journal)
    seen = Counter(counter for counter, _ in chain)
    audit.duplicated = sorted(c for c, n in seen.items() if n > 1)
    chained = dict(chain)
    audit.lost = sorted(c for c in signed if c not in chained)
    audit.unknown = sorted(c for c in chained if c not in signed)
    audit.altered = sorted(c for c, raw in chain if c in signed and signed[c] != raw)
    audit.broken = check_hash_chain(sorted(journal), public_key)
    return audit


def check_hash_chain(journal: Sequence[tuple[int, bytes]], public_key: bytes | None) -> list[str]:
    """Counters gapless from 1, each prev_hash the SHA-256 of the document before, each
    signature good (when the device's key is given)."""
    problems: list[str] = []
    previous = bytes(32)
    for expected, (counter, raw) in enumerate(journal, start=1):
        try:
            doc = parse_document(raw)
        except DocumentError as exc:
            problems.append(f"counter {counter}: {exc}")
            continue
        if counter != expected or doc.counter != counter:
            problems.append(f"counter {counter}: expected {expected}")
        if doc.payload["prev_hash"] != previous:
            problems.append(f"counter {counter}: prev_hash does not link to the document before")
        if public_key is not None and not doc.verify(public_key):
            problems.append(f"counter {counter}: signature does not verify")
        previous = hashlib.sha256(raw).digest()
    return problems


def admin_token(chain_data: Path) -> str:
    """The auditor's credential of the chain whose data directory is `chain_data`."""
    return (chain_data / ADMIN_TOKEN_FILE).read_text().strip()


def chain_documents(
    chain_url: str, device_id: str, token: str, timeout: float = 30
) -> list[tuple[int, bytes]]:
    """Every document the chain holds for a device, as (counter, bytes); `token` is a
    reader's credential (the auditor's admin token, or the seller's taxpayer token)."""
    out: list[tuple[int, bytes]] = []
    after = 0
    quoted = urllib.parse.quote(device_id, safe="")
    while True:
        url = f"{chain_url}/v1/devices/{quoted}/documents?after={after}&limit={PAGE}"
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            page = json.loads(resp.read())["documents"]
        out += [(d["counter"], base64.b64decode(d["cose_sign1"])) for d in page]
        if len(page) < PAGE:
            return out
        after = out[-1][0]
