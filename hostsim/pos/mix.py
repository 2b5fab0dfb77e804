"""What a shop's tills sell: a seeded, realistic mix of sales (pure, no I/O).

A sale is an invoice request as the POS API takes it, or now and then a
red-letter credit note against an invoice the same tills issued earlier.
The mix is reproducible from a seed, so a benchmark or a chaos run can be
repeated sale for sale.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from device.protocol import taxid

# (name, unit price in fen, tax rate in basis points, sold by weight)
CATALOGUE: tuple[tuple[str, int, int, bool], ...] = (
    ("Laptop 14in", 459900, 1300, False),
    ("USB-C cable", 3900, 1300, False),
    ("Printer paper A4 500", 2890, 1300, False),
    ("Rice 5kg", 4590, 900, False),
    ("Cooking oil 5L", 8990, 900, False),
    ("Apples", 1290, 900, True),
    ("Pork belly", 3580, 900, True),
    ("Consulting hour", 60000, 600, False),
    ("Courier delivery", 1500, 900, False),
    ("Software licence", 129900, 600, False),
    ("Tea 250g", 4500, 1300, False),
    ("Small-taxpayer service", 20000, 300, False),
    ("Textbook", 5600, 0, False),
    ("Vegetables (exempt)", 680, 0, True),
)

BUYER_NAMES = (
    "ACME Trading Co.",
    "Hangzhou Lakeside Tech Ltd.",
    "Shenzhen Harbour Logistics",
    "Beijing Northern Foods",
    "Chengdu Panda Print Shop",
    "Xiamen Seaview Hotel",
)


@dataclass(frozen=True)
class MixSettings:
    credit_share: float = 0.03  # of sales, once an invoice exists to credit
    retry_share: float = 0.05  # sales whose answer the till "loses" and asks again
    business_share: float = 0.4  # buyers who give a company name and tax id
    max_items: int = 6


@dataclass(frozen=True)
class Sale:
    route: str  # "invoices" or "credit-notes"
    body: dict[str, Any]
    resend: bool  # ask again with the same idempotency key after the answer
    device: str | None = None  # a credit note goes to the printer of its invoice


@dataclass
class SaleMix:
    """Draws sales; remembers issued invoices so credit notes have something to credit."""

    seed: int = 0
    settings: MixSettings = field(default_factory=MixSettings)
    creditable: list[tuple[str, str, str | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        self._credited: set[tuple[str, str]] = set()

    def issued(self, code: str, number: str, device: str | None = None) -> None:
        """An invoice the tills got back (from `device`): a candidate for a credit note."""
        self.creditable.append((code, number, device))

    def next_sale(self) -> Sale:
        rnd = self._random
        resend = rnd.random() < self.settings.retry_share
        if self.creditable and rnd.random() < self.settings.credit_share:
            code, number, device = self.creditable.pop(rnd.randrange(len(self.creditable)))
            if (code, number) not in self._credited:
                self._credited.add((code, number))
                body = {
                    "refers_to": {"code": code, "number": number},
                    "reason": rnd.choice(("goods returned", "price corrected", "order cancelled")),
                }
                return Sale("credit-notes", body, resend, device)
        return Sale("invoices", self.invoice(), resend)

    def invoice(self) -> dict[str, Any]:
        rnd = self._random
        lines = rnd.sample(CATALOGUE, k=rnd.randint(1, self.settings.max_items))
        items = []
        for name, price, rate, by_weight in lines:
            if by_weight:
                quantity = f"{rnd.randint(100, 5000) / 1000:.3f}".rstrip("0").rstrip(".")
            else:
                quantity = str(rnd.choice((1, 1, 1, 2, 3, 5, 10)))
            items.append(
                {"name": name, "quantity": quantity, "unit_price": price, "tax_rate_bp": rate}
            )
        return {"buyer": self.buyer(), "items": items}

    def buyer(self) -> dict[str, str]:
        rnd = self._random
        if rnd.random() < self.settings.business_share:
            prefix = "913" + "".join(rnd.choice("0123456789") for _ in range(14))
            return {"name": rnd.choice(BUYER_NAMES), "tax_id": taxid.make(prefix)}
        return {"name": rnd.choice(("个人", "Walk-in customer", "散客"))}
