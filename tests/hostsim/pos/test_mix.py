"""The sales mix: reproducible, and every sale is one a printer accepts."""

from __future__ import annotations

from device.protocol import taxid
from device.protocol.invoice import (
    DEFAULT_TAX_RATES,
    parse_credit_request,
    parse_invoice_request,
)
from hostsim.pos.mix import MixSettings, SaleMix
from hostsim.pos.stats import percentile, percentiles


def test_same_seed_same_sales() -> None:
    a, b = SaleMix(7), SaleMix(7)
    assert [a.next_sale() for _ in range(50)] == [b.next_sale() for _ in range(50)]
    assert SaleMix(8).next_sale() != SaleMix(7).next_sale()


def test_every_invoice_is_valid_and_the_mix_is_varied() -> None:
    mix = SaleMix(1, MixSettings(credit_share=0.0))
    rates: set[int] = set()
    with_tax_id = without = 0
    for _ in range(500):
        sale = mix.next_sale()
        assert sale.route == "invoices"
        request = parse_invoice_request(sale.body, DEFAULT_TAX_RATES)
        assert request.lines
        rates |= {line.tax_rate_bp for line in request.lines}
        buyer = sale.body["buyer"]
        if "tax_id" in buyer:
            assert taxid.is_valid(buyer["tax_id"])
            with_tax_id += 1
        else:
            without += 1
    assert rates == set(DEFAULT_TAX_RATES)
    assert with_tax_id > 100 and without > 100


def test_credit_notes_refer_to_issued_invoices_once_each() -> None:
    mix = SaleMix(3, MixSettings(credit_share=0.5))
    assert all(mix.next_sale().route == "invoices" for _ in range(20))  # nothing to credit yet
    issued = [(f"0440{n:08d}", f"{n:08d}") for n in range(1, 11)]
    for code, number in issued:
        mix.issued(code, number, device=f"printer-{number}")
    credited = []
    for _ in range(200):
        sale = mix.next_sale()
        if sale.route == "credit-notes":
            parse_credit_request(sale.body, DEFAULT_TAX_RATES)
            ref = sale.body["refers_to"]
            credited.append((ref["code"], ref["number"]))
            assert sale.device == f"printer-{ref['number']}"  # the printer that issued it
    assert sorted(credited) == sorted(issued)  # each credited, none twice


def test_retry_share_marks_some_sales_to_ask_twice() -> None:
    mix = SaleMix(5, MixSettings(retry_share=0.25))
    resent = sum(mix.next_sale().resend for _ in range(400))
    assert 60 < resent < 140


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentiles(values) == {"p50": 50.0, "p90": 90.0, "p99": 99.0, "max": 100.0}
    assert percentile([], 0.5) == 0.0
    assert percentiles([3.0]) == {"p50": 3.0, "p90": 3.0, "p99": 3.0, "max": 3.0}
