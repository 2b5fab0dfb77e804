"""After the chaos: is every document where it must be, once, intact?

For every printer: its journal against the chain, byte for byte (nothing
lost, duplicated, altered or unknown), counters gapless, each prev_hash the
hash of the document before, each signature good. Every document the tills
were given is on the chain under the same code and number, and no two sales
were given the same document. Then the whole ledger is re-checked from disk.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device.journal import export
from device.protocol.document import parse_document
from hostsim.audit import DeviceAudit, admin_token, chain_documents, compare
from taxctl_base.processes import http

# An independent verifier of one COSE_Sign1 with a public key (the tests pass pycose's).
Verifier = Callable[[bytes, bytes], bool]


@dataclass
class Verdict:
    documents: int = 0
    acknowledged: int = 0
    audits: list[DeviceAudit] = field(default_factory=list)
    acks_missing: list[str] = field(default_factory=list)  # given to a till, not on the chain
    acks_twice: list[str] = field(default_factory=list)  # one document given to two sales
    acks_differing: list[str] = field(default_factory=list)  # other code/number on the chain
    independent_failures: list[str] = field(default_factory=list)
    ledger: str = ""

    @property
    def lost(self) -> int:
        return sum(len(a.lost) + len(a.altered) for a in self.audits) + len(self.acks_missing)

    @property
    def duplicated(self) -> int:
        return sum(len(a.duplicated) + len(a.unknown) for a in self.audits) + len(self.acks_twice)

    @property
    def ok(self) -> bool:
        return (
            all(a.clean for a in self.audits)
            and not self.ack_problems()
            and not self.independent_failures
            and self.ledger.startswith("ok")
        )

    def ack_problems(self) -> list[str]:
        return self.acks_missing + self.acks_twice + self.acks_differing

    def problems(self) -> list[str]:
        out = [f"{a.device_id}: {a}" for a in self.audits if not a.clean]
        return out + self.ack_problems() + self.independent_failures + [self.ledger]


def check_devices(
    root: Path,
    chain_url: str,
    device_ids: list[str],
    acks_file: Path,
    verifier: Verifier | None = None,
) -> Verdict:
    """With the printers stopped and the chain still serving."""
    verdict = Verdict()
    token = admin_token(root / "chain")
    held: dict[tuple[str, int], tuple[str | None, str | None]] = {}
    for n, device_id in enumerate(device_ids):
        journal = [(row.counter, row.doc) for row in export(root / f"device-{n + 1}")]
        chain = chain_documents(chain_url, device_id, token)
        _, info = http("GET", f"{chain_url}/v1/devices/{device_id}", token=token)
        public_key = bytes.fromhex(info["public_key"])
        verdict.audits.append(compare(device_id, journal, chain, public_key))
        verdict.documents += len(journal)
        for counter, raw in chain:
            doc = parse_document(raw)
            held[(device_id, counter)] = (doc.code, doc.number)
            if verifier is not None and not verifier(raw, public_key):
                verdict.independent_failures.append(f"{device_id} #{counter}: COSE check failed")
    acks = (
        [json.loads(line) for line in acks_file.read_text().splitlines()]
        if acks_file.exists()
        else []
    )
    verdict.acknowledged = len(acks)
    given = Counter((a["device_id"], a["counter"]) for a in acks)
    for (device_id, counter), times in given.items():
        if times > 1:
            verdict.acks_twice.append(f"{device_id} #{counter} given twice to the tills")
    for ack in acks:
        where = held.get((ack["device_id"], ack["counter"]))
        if where is None:
            verdict.acks_missing.append(f"{ack['device_id']} #{ack['counter']} not on the chain")
        elif where != (ack["code"], ack["number"]):
            verdict.acks_differing.append(f"{ack} differs from the chain's {where}")
    return verdict


def check_ledger(verdict: Verdict, chain_data: Path) -> None:
    """With the chain stopped: re-check every block, quorum signature and document."""
    from hostsim.chain.verify import LedgerCorrupt, verify_ledger

    try:
        report = verify_ledger(chain_data)
    except LedgerCorrupt as exc:
        verdict.ledger = f"BAD: {exc}"
        return
    verdict.ledger = f"ok: {report.blocks} blocks, {report.documents} documents"


def summary(verdict: Verdict, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        **extra,
        "documents": verdict.documents,
        "acknowledged_to_tills": verdict.acknowledged,
        "lost": verdict.lost,
        "duplicated": verdict.duplicated,
        "ledger": verdict.ledger,
        "ok": verdict.ok,
        "problems": verdict.problems()[:20] if not verdict.ok else [],
    }
