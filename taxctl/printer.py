"""The printer for integrators: `async with Printer.open(url) as printer`.

A Printer is one DeviceClient on one port, with typed requests in and typed answers out:

    async with Printer.open("/dev/ttyUSB0") as printer:
        issued = await printer.issue(InvoiceRequest(None, [Line.of("Tea", "2", 1250, 1300)]))
        print(issued.number, issued.check_code)

`url` is a device path (/dev/ttyUSB0, a pty's path), any pyserial URL (socket://host:port,
rfc2217://...), or `loop://`: an emulated training printer in this process, on an
in-memory port pair (`loop://?state=DIR` keeps its journal in DIR across runs). Nothing
is opened or started before `open` is entered (or awaited).

Errors are the hierarchy of device.errors, re-exported by `taxctl`: Refused (nothing was
done; `.status`), OutcomeUnknown (send it again with `.request_id`), PortError. An issuing
request whose outcome stays unknown is sent again with the same request id up to
`resends` times before OutcomeUnknown reaches the caller: the device answers a repeat
with its first answer, so this never issues twice.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from device.client import HELLO, DeviceClient
from device.emulator import EmulatedPrinter
from device.errors import OutcomeUnknown, PortError
from device.protocol.commands import (
    BAUD,
    HOST_MAX_IN_FLIGHT,
    MAX_RETRIES,
    RESPONSE_TIMEOUT,
    Command,
)
from device.protocol.invoice import CreditRequest, InvoiceRequest
from device.protocol.untrusted import shown
from device.transport import Port, open_serial
from taxctl.responses import (
    DocumentResponse,
    PrinterInfo,
    PrinterStatus,
    document_response,
    printer_info,
    printer_status,
)

RESENDS = 2  # sends of an issuing request after an unknown outcome, same request id
LOOP = "loop://"

PortWrapper = Callable[[Port], Port]


@dataclass(frozen=True)
class Options:
    """How a Printer talks to its port; the defaults are the protocol's (commands.py)."""

    baud: int = BAUD
    parity: str = "N"
    stopbits: float = 1
    rtscts: bool = False
    response_timeout: float = RESPONSE_TIMEOUT
    max_retries: int = MAX_RETRIES
    max_in_flight: int = HOST_MAX_IN_FLIGHT
    resends: int = RESENDS
    wrap_port: PortWrapper | None = None


class Printer:
    """An open printer. Make one with `Printer.open(url)`; all methods are coroutines.

    Any number of requests may be awaited at once (they are pipelined on the line, at most
    min(max_in_flight, what the device announced) outstanding)."""

    def __init__(
        self,
        client: DeviceClient,
        info: PrinterInfo,
        *,
        resends: int = RESENDS,
        emulator: EmulatedPrinter | None = None,
    ) -> None:
        self.client = client
        self.info = info
        self.emulator = emulator  # the printer at the far end of loop://, else None
        self._resends = resends

    @staticmethod
    def open(
        url: str | Port,
        *,
        baud: int = BAUD,
        parity: str = "N",
        stopbits: float = 1,
        rtscts: bool = False,
        response_timeout: float = RESPONSE_TIMEOUT,
        max_retries: int = MAX_RETRIES,
        max_in_flight: int = HOST_MAX_IN_FLIGHT,
        resends: int = RESENDS,
        wrap_port: PortWrapper | None = None,
    ) -> Opening:
        """A printer on `url` (or an already open Port): use `async with` (closed on the
        way out) or `await` (then call `close()`). `wrap_port` wraps the opened port,
        e.g. `lambda port: NoisyPort(port, settings)` for a bad line."""
        options = Options(
            baud,
            parity,
            stopbits,
            rtscts,
            response_timeout,
            max_retries,
            max_in_flight,
            resends,
            wrap_port,
        )
        return Opening(url, options)

    @property
    def device_id(self) -> str:
        return self.info.device_id

    @property
    def max_in_flight(self) -> int:
        """Requests kept outstanding at most on this link."""
        return self.client.max_in_flight

    def new_request_id(self) -> int:
        """A fresh request id: keep it to send the same request again after OutcomeUnknown."""
        return self.client.new_request_id()

    async def close(self) -> None:
        try:
            await self.client.close()
        finally:
            if self.emulator is not None:
                await self.emulator.stop()

    async def __aenter__(self) -> Printer:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- documents ------------------------------------------------------------------------

    async def issue(
        self, request: InvoiceRequest, *, request_id: int | None = None
    ) -> DocumentResponse:
        """Sign an invoice; exactly once per request id."""
        return await self._issuing(Command.ISSUE, request.to_body(), request_id)

    async def credit(
        self, request: CreditRequest, *, request_id: int | None = None
    ) -> DocumentResponse:
        """Sign a red-letter credit note against an earlier invoice of this printer."""
        return await self._issuing(Command.CREDIT, request.to_body(), request_id)

    async def x_report(self, *, request_id: int | None = None) -> DocumentResponse:
        """Sign a running-totals report (the day is not closed)."""
        return await self._issuing(Command.X_REPORT, {}, request_id)

    async def z_report(self, *, request_id: int | None = None) -> DocumentResponse:
        """Sign the day-close report and reset the running totals."""
        return await self._issuing(Command.Z_REPORT, {}, request_id)

    async def reprint(
        self, counter: int | None = None, *, code: str | None = None, number: str | None = None
    ) -> DocumentResponse:
        """An issued document again, by counter or by invoice code and number."""
        if (counter is None) == (code is None or number is None):
            raise ValueError("reprint takes a counter, or a code and a number")
        body: dict[str, Any] = (
            {"counter": counter} if counter is not None else {"code": code, "number": number}
        )
        rid = self.new_request_id()
        answer = await self._send(Command.GET_DOCUMENT, body, rid)
        return document_response(answer, self.info.public_key, rid)

    # --- state ----------------------------------------------------------------------------

    async def status(self) -> PrinterStatus:
        return printer_status(await self._send(Command.STATUS, {}, self.new_request_id()))

    async def control(
        self, *, paper_out: bool | None = None, cover_open: bool | None = None
    ) -> dict[str, bool]:
        """Emulator only: switch the paper-out and cover-open sensors."""
        answer = await self.client.control(paper_out=paper_out, cover_open=cover_open)
        return {
            "paper_out": bool(answer.get("paper_out")),
            "cover_open": bool(answer.get("cover_open")),
        }

    # --- sending --------------------------------------------------------------------------

    async def _issuing(
        self, command: Command, body: dict[str, Any], request_id: int | None
    ) -> DocumentResponse:
        rid = request_id if request_id is not None else self.new_request_id()
        answer = await self._send(command, body, rid)
        return document_response(answer, self.info.public_key, rid)

    async def _send(self, command: Command, body: dict[str, Any], rid: int) -> dict[str, Any]:
        return await resending(self.client, command, body, rid, self._resends)


async def resending(
    client: DeviceClient, command: Command, body: dict[str, Any], rid: int, resends: int
) -> dict[str, Any]:
    """The answer to one request, sent again with the same id while its outcome is unknown
    and the link is up (safe for every command: a read is read again, an issuing request
    answered from the journal); OutcomeUnknown naming the id when that runs out."""
    for attempt in range(resends + 1):
        try:
            return await client.request(command, body, request_id=rid)
        except OutcomeUnknown as exc:
            if attempt == resends or client.closed:
                raise _unknown(rid, exc) from exc
    raise AssertionError("unreachable")  # the loop returns or raises


def _unknown(rid: int, cause: OutcomeUnknown) -> OutcomeUnknown:
    error = OutcomeUnknown(f"{cause} (send it again with request id {rid:#x})")
    error.request_id = rid
    return error


class Opening:
    """What `Printer.open` returns: an async context manager, or an awaitable."""

    def __init__(self, url: str | Port, options: Options) -> None:
        self._url = url
        self._options = options
        self._printer: Printer | None = None

    def __await__(self) -> Generator[Any, None, Printer]:
        return connect(self._url, self._options).__await__()

    async def __aenter__(self) -> Printer:
        self._printer = await connect(self._url, self._options)
        return self._printer

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._printer is not None:
            await self._printer.close()


async def connect(url: str | Port, options: Options) -> Printer:
    """Open the port, handshake (HELLO, INFO) and return the Printer."""
    emulator, resends = None, options.resends
    if isinstance(url, str) and url.startswith(LOOP):
        emulator = EmulatedPrinter(_loop_state(url), name=url)
        port: Port = await emulator.start()
    elif isinstance(url, str):
        port = open_serial(
            url,
            baud=options.baud,
            parity=options.parity,
            stopbits=options.stopbits,
            rtscts=options.rtscts,
        )
    else:
        port = url
    if options.wrap_port is not None:
        port = options.wrap_port(port)
    client = DeviceClient(
        port,
        response_timeout=options.response_timeout,
        max_retries=options.max_retries,
        max_in_flight=options.max_in_flight,
    )
    try:
        client.start()
        hello = await resending(client, Command.HELLO, HELLO, client.new_request_id(), resends)
        client.adapt(hello)
        info = await resending(client, Command.INFO, {}, client.new_request_id(), resends)
        printed = printer_info(hello, info)
    except BaseException:
        await client.close()
        if emulator is not None:
            await emulator.stop()
        raise
    return Printer(client, printed, resends=resends, emulator=emulator)


def _loop_state(url: str) -> Path | None:
    """`loop://` or `loop://?state=DIR`: where the emulated printer keeps its journal."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    if parts.netloc or parts.path or set(query) - {"state"} or len(query.get("state", [])) > 1:
        raise PortError(f"{shown(url)}: loop:// takes one option, ?state=DIR")
    return Path(query["state"][0]) if "state" in query else None
