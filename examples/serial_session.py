"""A raw serial session with a printer: who it is, its state, an invoice, its reprint,
a credit note and the day's X report — everything a till does, over the serial line.

    python examples/serial_session.py                  # an emulated printer (loop://)
    python examples/serial_session.py /dev/ttyUSB0     # a printer on a port (any path or
                                                       # pyserial URL, e.g. socket://h:4001)

It issues only on a training printer unless given --production: on a production
printer every invoice it signs is a real one.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from taxctl import CreditRequest, InvoiceRequest, Line, Printer, TaxctlError

SALE = InvoiceRequest(
    {"name": "ACME Trading", "tax_id": "91350100M000100Y43"},
    [Line.of("Green tea", "1.5", 1000, 1300), Line.of("Cup", "2", 800, 900)],
)


def yuan(fen: int) -> str:
    return f"{fen / 100:.2f}"


async def session(url: str, production: bool) -> None:
    async with Printer.open(url) as printer:
        info = printer.info
        mode = "training" if info.training else "production"
        print(f"printer {info.device_id} ({mode}, firmware {info.firmware}) on {url}")
        status = await printer.status()
        print(f"counter {status.counter}, {status.unsynced} not yet on the chain,", end=" ")
        print("can issue" if status.can_issue else f"blocked: {', '.join(status.blocking)}")
        if not info.training and not production:
            print("a production printer: not issuing (pass --production to issue for real)")
            return
        rid = printer.new_request_id()  # kept: a retry with it can never issue twice
        issued = await printer.issue(SALE, request_id=rid)
        print(f"invoice {issued.code}/{issued.number}: {yuan(issued.total)} yuan,", end=" ")
        print(f"check code {issued.check_code}, counter {issued.counter}")
        print(f"receipt QR: {issued.qr}")
        again = await printer.reprint(issued.counter)
        print(f"reprint of counter {again.counter}: same signed bytes: {again.cose == issued.cose}")
        assert issued.code is not None and issued.number is not None
        credit = await printer.credit(CreditRequest(issued.code, issued.number, "returned", None))
        print(f"credit note {credit.code}/{credit.number}: {yuan(credit.total)} yuan")
        report = await printer.x_report()
        day = report.document.payload["report"]
        print(f"X report: {day['documents']} documents ({day['invoices']} invoices,", end=" ")
        print(f"{day['credits']} credit notes) since counter {day['from_counter']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", default="loop://", help="port (default loop://)")
    parser.add_argument("--production", action="store_true", help="issue on a production printer")
    args = parser.parse_args(argv)
    try:
        asyncio.run(session(args.url, args.production))
    except TaxctlError as exc:  # Refused, OutcomeUnknown or PortError: each says what to do
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
