"""A till over syncd's POS API: issue an invoice, print its receipt, reprint it, credit it.

    python examples/pos_http.py http://127.0.0.1:8631 [--token-file FILE]

PosClient sends an Idempotency-Key with every issuing request and follows the API's
retry rules (503 with Retry-After; after OUTCOME_UNKNOWN the same key, which returns the
one document the printer signed, never a second), so a till never issues a sale twice.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from taxctl import PosClient, PosError

SALE = {
    "buyer": {"name": "ACME Trading", "tax_id": "91350100M000100Y43"},
    "items": [
        {"name": "Green tea", "quantity": "1.5", "unit_price": 1000, "tax_rate_bp": 1300},
        {"name": "Cup", "quantity": "2", "unit_price": 800, "tax_rate_bp": 900},
    ],
}


def till(url: str, token: str | None) -> None:
    with PosClient(url, token=token) as pos:
        try:
            issued = pos.issue_invoice(SALE)  # an Idempotency-Key is made up and kept
        except PosError as refused:
            # maybe_issued: no answer came; the sale may exist: retry with this key only
            print(f"{refused.code}: {refused.message} (key {refused.idempotency_key})")
            raise
        print(f"invoice {issued.code}/{issued.number}: {issued.total} fen (key", end=" ")
        print(f"{issued.idempotency_key})")
        print(issued.receipt_text)
        again = pos.reprint(code=issued.code, number=issued.number)
        print(f"reprint: same signed document: {again.cose_sign1 == issued.cose_sign1}")
        refers_to = {"code": issued.code, "number": issued.number}
        credit = pos.issue_credit_note({"refers_to": refers_to, "reason": "returned"})
        print(f"credit note {credit.code}/{credit.number}: {credit.total} fen")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="syncd's POS API, e.g. http://127.0.0.1:8631")
    parser.add_argument("--token-file", type=Path, help="the bearer token (api.token_file)")
    args = parser.parse_args(argv)
    token = args.token_file.read_text().strip() if args.token_file else None
    try:
        till(args.url, token)
    except PosError:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
