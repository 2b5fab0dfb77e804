"""The integrator API: Printer over loop://, typed requests in, checked answers out."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

import taxctl
from device.emulator import EmulatedPrinter
from device.protocol.document import Kind
from device.protocol.framing import Frame
from device.protocol.invoice import (
    CreditRequest,
    InvoiceRequest,
    Line,
    parse_credit_request,
    parse_invoice_request,
)
from device.protocol.status import Status
from hostsim.noise import Noise, NoiseSettings
from hostsim.noisyport import NoisyPort
from taxctl import OutcomeUnknown, PortError, Printer, Refused, SyncPrinter, TaxctlError
from tests.helpers import check_journal
from tests.syncd.inprocess import RewritingPort

BUYER = {"name": "ACME Trading", "tax_id": "91350100M000100Y43"}
SALE = InvoiceRequest(BUYER, [Line.of("Tea", "2", 1250, 1300), Line.of("Cup", "1", 800, 900)])
RATES = frozenset({0, 300, 600, 900, 1300})


def test_request_types_give_the_body_the_device_parses_back() -> None:
    assert parse_invoice_request(SALE.to_body(), RATES) == SALE
    credit = CreditRequest(
        "998853121288", "00000001", "returned", [Line.of("Tea", "1", 1250, 1300)]
    )
    parsed = parse_credit_request(credit.to_body(), RATES)
    assert parsed.lines is not None and parsed.lines[0].quantity_milli == -1000  # negated there
    assert (parsed.code, parsed.number, parsed.reason) == (credit.code, credit.number, "returned")


def test_opening_starts_nothing_and_needs_no_loop(tmp_path: Path) -> None:
    """No running loop here, and a port that does not exist: open() must not touch it
    (nor start an emulator) until it is entered or awaited."""
    Printer.open(str(tmp_path / "ttyUSB9"))
    Printer.open("loop://")
    assert not list(tmp_path.iterdir())

    async def enter() -> None:
        async with Printer.open(str(tmp_path / "ttyUSB9")):
            pass

    with pytest.raises(PortError, match="no serial port"):
        asyncio.run(enter())


async def test_issue_reprint_credit_and_reports_are_typed_and_verified() -> None:
    async with Printer.open("loop://") as printer:
        assert printer.info.training and printer.device_id.startswith("TC")
        issued = await printer.issue(SALE)
        assert issued.kind == Kind.INVOICE and issued.counter == 1 and issued.number is not None
        assert issued.total == 2825 + 872 and issued.qr is not None
        assert issued.document.verify(printer.info.public_key)
        again = await printer.reprint(code=issued.code, number=issued.number)
        assert again.cose == issued.cose and again.synced is False
        assert (await printer.reprint(1)).check_code == issued.check_code
        assert issued.code is not None
        credit = await printer.credit(CreditRequest(issued.code, issued.number, "returned", None))
        assert credit.kind == Kind.CREDIT and credit.total == -issued.total
        assert (await printer.x_report()).kind == Kind.X_REPORT
        assert (await printer.z_report()).qr is None
        status = await printer.status()
        assert status.counter == 4 and status.can_issue and status.unsynced == 4


async def test_a_refusal_is_refused_with_its_status_and_changes_nothing() -> None:
    async with Printer.open("loop://") as printer:
        await printer.control(paper_out=True)
        with pytest.raises(Refused) as caught:
            await printer.issue(SALE)
        assert caught.value.status == Status.PAPER_OUT and caught.value.code == "PAPER_OUT"
        assert isinstance(caught.value, TaxctlError)
        assert (await printer.status()).counter == 0


async def test_the_same_request_id_issues_once() -> None:
    async with Printer.open("loop://") as printer:
        rid = printer.new_request_id()
        first = await printer.issue(SALE, request_id=rid)
        second = await printer.issue(SALE, request_id=rid)
        assert first.cose == second.cose and second.request_id == rid
        assert printer.emulator is not None and printer.emulator.fw.journal.count() == 1


async def test_an_unknown_outcome_names_the_request_id_to_send_again() -> None:
    quiet = NoiseSettings()
    noisy: list[NoisyPort] = []

    def wrap(port: taxctl.Port) -> taxctl.Port:
        noisy.append(NoisyPort(port, quiet, seed=3))
        return noisy[0]

    async with Printer.open(
        "loop://", response_timeout=0.05, max_retries=1, resends=1, wrap_port=wrap
    ) as printer:
        noisy[0].to_host = Noise(NoiseSettings(drop_rate=1.0), 4)  # every answer lost
        with pytest.raises(OutcomeUnknown) as caught:
            await printer.issue(SALE)
        rid = caught.value.request_id
        assert rid is not None and f"{rid:#x}" in str(caught.value)
        noisy[0].to_host = Noise(quiet, 5)  # the line is back: the same id gets that invoice
        issued = await printer.issue(SALE, request_id=rid)
        assert issued.counter == 1
        assert printer.emulator is not None and printer.emulator.fw.journal.count() == 1


async def test_an_answer_that_disagrees_with_its_document_is_outcome_unknown() -> None:
    """A printer that says one total and signed another: never taken as the document."""
    from device.protocol import codec
    from device.protocol.framing import FrameType

    def lie(frame: Frame) -> Frame:
        if frame.type != FrameType.RESPONSE or frame.status:
            return frame
        body = codec.decode(frame.body)
        if isinstance(body, dict) and "total" in body:
            body["total"] += 1
        return Frame(frame.type, frame.request_id, frame.command, frame.status, codec.encode(body))

    async with Printer.open(
        "loop://", resends=0, wrap_port=lambda port: RewritingPort(port, lie)
    ) as printer:
        with pytest.raises(OutcomeUnknown, match="total is not the document's"):
            await printer.issue(SALE)


async def test_the_window_is_the_smaller_of_configured_and_announced(tmp_path: Path) -> None:
    async with Printer.open("loop://") as printer:
        assert printer.info.max_in_flight == 64 and printer.max_in_flight == 32
    emulator = EmulatedPrinter(tmp_path / "state", max_in_flight=4)
    host = await emulator.start()
    try:
        async with Printer.open(host) as printer:
            assert printer.max_in_flight == 4
            docs = await asyncio.gather(*(printer.issue(SALE) for _ in range(10)))
            assert sorted(d.counter for d in docs) == list(range(1, 11))
    finally:
        await emulator.stop()


async def test_loop_state_keeps_the_journal_across_opens(tmp_path: Path) -> None:
    url = f"loop://?state={tmp_path / 'printer'}"
    async with Printer.open(url) as printer:
        device_id = printer.device_id
        await printer.issue(SALE)
    async with Printer.open(url) as printer:
        assert printer.device_id == device_id
        assert (await printer.issue(SALE)).counter == 2


async def test_bad_urls_are_port_errors(tmp_path: Path) -> None:
    for url in ("loop://?speed=9", "loop://elsewhere", str(tmp_path / "ttyUSB9")):
        with pytest.raises(PortError):
            async with Printer.open(url):
                pass


def test_the_sync_printer_issues_from_threads_and_refuses_its_own_loop() -> None:
    with SyncPrinter.open("loop://") as printer:
        numbers: list[str | None] = []
        threads = [
            threading.Thread(target=lambda: numbers.append(printer.issue(SALE).number))
            for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert len(set(numbers)) == 4 and printer.status().counter == 4

        async def inside() -> None:
            printer.status()

        future = asyncio.run_coroutine_threadsafe(inside(), printer._loop)
        with pytest.raises(RuntimeError, match="its own event loop"):
            future.result(5)


async def test_a_noisy_line_still_issues_every_invoice_exactly_once() -> None:
    """N invoices through NoisyPort (bit flips, lost bytes and bursts both ways, latency):
    each request id sent until it is answered, as the docs tell an integrator to."""
    line = NoiseSettings(corrupt_rate=3e-4, drop_rate=2e-4, burst_rate=0.02, delay_max=0.002)
    noisy: list[NoisyPort] = []

    def wrap(port: taxctl.Port) -> taxctl.Port:
        noisy.append(NoisyPort(port, line, seed=18))
        return noisy[0]

    async with Printer.open("loop://", response_timeout=0.2, wrap_port=wrap) as printer:

        async def sale(index: int) -> int:
            request = InvoiceRequest(None, [Line.of(f"Item {index}", "1", 100 + index, 1300)])
            rid = printer.new_request_id()
            for _ in range(20):
                try:
                    return (await printer.issue(request, request_id=rid)).counter
                except OutcomeUnknown:
                    continue
            raise AssertionError(f"sale {index} never answered")

        counters = await asyncio.wait_for(asyncio.gather(*(sale(i) for i in range(40))), 120)
        assert sorted(counters) == list(range(1, 41))
        assert printer.emulator is not None
        fw = printer.emulator.fw
        assert fw.journal.count() == 40
        docs = [row.doc for row in (fw.journal.document(c) for c in range(1, 41)) if row]
        check_journal(docs, printer.info.public_key)
        stats = noisy[0].stats()
        assert stats["to_device"]["corrupted"] + stats["to_device"]["dropped"] > 0
        assert stats["to_host"]["corrupted"] + stats["to_host"]["dropped"] > 0


def test_taxctl_exports_are_its_all() -> None:
    import importlib.util

    missing = importlib.util.find_spec("syncd.posclient") is None
    for name in taxctl.__all__:
        if missing and name in ("PosClient", "AsyncPosClient", "PosError"):
            continue
        assert getattr(taxctl, name) is not None
    assert set(taxctl.__all__) == {"__version__", *taxctl._EXPORTS}
    with pytest.raises(AttributeError):
        taxctl.NoSuchThing  # noqa: B018


async def test_a_document_answer_is_checked_before_it_is_typed() -> None:
    """Each lie a printer could tell in a DocumentResponse is OutcomeUnknown, never a
    document handed to the till: another key, another document's QR, a bad flag."""
    from device.client import UnreadableResponse
    from taxctl.responses import document_response

    async with Printer.open("loop://") as printer:
        first = await printer.client.issue(SALE.to_body())
        second = await printer.client.issue(SALE.to_body())
        key = printer.info.public_key
        assert document_response(first, key, 1).counter == 1
        async with Printer.open("loop://") as other:
            lies = {
                "signed by another key": (first, other.info.public_key),
                "another document's QR": ({**first, "qr": second["qr"]}, key),
                "not a document": ({**first, "document": b"\xa0"}, key),
                "a synced flag that is not a flag": ({**first, "synced": 1}, key),
            }
        for answer, public_key in lies.values():
            with pytest.raises(UnreadableResponse, match="outcome is unknown"):
                document_response(answer, public_key, 7)
