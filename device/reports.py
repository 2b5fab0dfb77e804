"""Running totals since the last Z report (the "day"), for X and Z reports.

Pure: updated as documents are signed, persisted with each journal batch,
turned into the `report` field of an X/Z document.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from device.protocol import codec
from device.protocol.document import Kind


@dataclass
class Period:
    z_number: int = 1  # the number the next Z report will carry
    from_counter: int = 1
    documents: int = 0
    invoices: int = 0
    credits: int = 0
    amount: int = 0
    tax: int = 0
    by_rate: dict[int, list[int]] = field(default_factory=dict)  # rate -> [amount, tax]

    def add(self, kind: Kind, items: list[dict[str, Any]]) -> None:
        self.documents += 1
        if kind == Kind.INVOICE:
            self.invoices += 1
        elif kind == Kind.CREDIT:
            self.credits += 1
        for item in items:
            rate = int(item["tax_rate_bp"])
            sums = self.by_rate.setdefault(rate, [0, 0])
            sums[0] += int(item["amount"])
            sums[1] += int(item["tax"])
            self.amount += int(item["amount"])
            self.tax += int(item["tax"])

    def report(self) -> dict[str, Any]:
        """The `report` field of an X/Z document, maps in deterministic key order."""
        return codec.ordered_map(
            {
                "z_number": self.z_number,
                "from_counter": self.from_counter,
                "documents": self.documents,
                "invoices": self.invoices,
                "credits": self.credits,
                "by_rate": [
                    {"tax": sums[1], "amount": sums[0], "tax_rate_bp": rate}
                    for rate, sums in sorted(self.by_rate.items())
                ],
            }
        )

    def closed(self, next_counter: int) -> Period:
        """The period that starts after a Z report."""
        return Period(z_number=self.z_number + 1, from_counter=next_counter)

    def copy(self) -> Period:
        return Period(
            self.z_number,
            self.from_counter,
            self.documents,
            self.invoices,
            self.credits,
            self.amount,
            self.tax,
            {rate: list(sums) for rate, sums in self.by_rate.items()},
        )

    def to_record(self) -> dict[str, Any]:
        return {
            "z_number": self.z_number,
            "from_counter": self.from_counter,
            "documents": self.documents,
            "invoices": self.invoices,
            "credits": self.credits,
            "amount": self.amount,
            "tax": self.tax,
            "by_rate": [[rate, a, t] for rate, (a, t) in sorted(self.by_rate.items())],
        }

    @classmethod
    def from_record(cls, record: dict[str, Any] | None) -> Period:
        if not record:
            return cls()
        return cls(
            int(record["z_number"]),
            int(record["from_counter"]),
            int(record["documents"]),
            int(record["invoices"]),
            int(record["credits"]),
            int(record["amount"]),
            int(record["tax"]),
            {int(rate): [int(a), int(t)] for rate, a, t in record["by_rate"]},
        )
