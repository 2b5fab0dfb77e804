"""A blocking Printer for scripts: `with SyncPrinter.open(url) as printer`.

A Printer's port is read continuously by tasks of one event loop, between calls as well
as during them (a late answer, an ACK), so the loop cannot be made per call. A
SyncPrinter runs its own loop in a daemon thread for as long as it is open and hands each
call to it (`asyncio.run_coroutine_threadsafe`); the calling thread blocks on the answer.
So it works the same from a plain script, from several threads at once (their requests
are pipelined) and from code that itself runs an event loop (a notebook), which
`asyncio.run` per call could not.

Rules: close it (or use `with`); never call it from a coroutine running on its own loop
(that would wait on itself: refused with RuntimeError). If the calling thread is
interrupted (Ctrl-C) while an issuing call waits, the outcome is unknown: send the same
request again with the request id you passed (choose it with `new_request_id()` first).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

from device.protocol.invoice import CreditRequest, InvoiceRequest
from device.transport import Port
from taxctl.printer import Printer
from taxctl.responses import DocumentResponse, PrinterInfo, PrinterStatus

T = TypeVar("T")


class SyncPrinter:
    """The methods of Printer, blocking. Open with `SyncPrinter.open(url, **options)`;
    the options are those of `Printer.open`."""

    def __init__(self, url: str | Port, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="taxctl printer", daemon=True
        )
        self._thread.start()
        try:
            self._printer: Printer = self._call(_opened(url, options))
        except BaseException:
            self._stop_loop()
            raise

    @classmethod
    def open(cls, url: str | Port, **options: Any) -> SyncPrinter:
        return cls(url, **options)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            coro.close()
            raise RuntimeError("a SyncPrinter cannot be called from its own event loop")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._call(self._printer.close())
        finally:
            self._stop_loop()

    def __enter__(self) -> SyncPrinter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def info(self) -> PrinterInfo:
        return self._printer.info

    @property
    def device_id(self) -> str:
        return self._printer.device_id

    @property
    def printer(self) -> Printer:
        """The async Printer underneath (use it only on this SyncPrinter's loop)."""
        return self._printer

    def new_request_id(self) -> int:
        return self._printer.new_request_id()

    def issue(self, request: InvoiceRequest, *, request_id: int | None = None) -> DocumentResponse:
        return self._call(self._printer.issue(request, request_id=request_id))

    def credit(self, request: CreditRequest, *, request_id: int | None = None) -> DocumentResponse:
        return self._call(self._printer.credit(request, request_id=request_id))

    def x_report(self, *, request_id: int | None = None) -> DocumentResponse:
        return self._call(self._printer.x_report(request_id=request_id))

    def z_report(self, *, request_id: int | None = None) -> DocumentResponse:
        return self._call(self._printer.z_report(request_id=request_id))

    def reprint(
        self, counter: int | None = None, *, code: str | None = None, number: str | None = None
    ) -> DocumentResponse:
        return self._call(self._printer.reprint(counter, code=code, number=number))

    def status(self) -> PrinterStatus:
        return self._call(self._printer.status())

    def control(
        self, *, paper_out: bool | None = None, cover_open: bool | None = None
    ) -> dict[str, bool]:
        return self._call(self._printer.control(paper_out=paper_out, cover_open=cover_open))


async def _opened(url: str | Port, options: dict[str, Any]) -> Printer:
    return await Printer.open(url, **options)
