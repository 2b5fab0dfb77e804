"""taxctl: emulated tax-control printer, host sync daemon and chain simulator.

The Python API for integrators (docs/python-api.md):

    from taxctl import Printer, InvoiceRequest, Line

    async with Printer.open("/dev/ttyUSB0") as printer:       # or "loop://": an emulator
        issued = await printer.issue(InvoiceRequest(None, [Line.of("Tea", "2", 1250, 1300)]))

`SyncPrinter` is the same, blocking, for scripts; `PosClient` / `AsyncPosClient` talk to
syncd's POS API over HTTP. Every error is a `TaxctlError`: `Refused` (nothing was done,
`.status`), `OutcomeUnknown` (send again with `.request_id`), `PortError`.

Names are imported on first use, so that `import taxctl` (and the CLI) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from taxctl_base.version import __version__

# name -> the module that defines it
_EXPORTS = {
    "Printer": "taxctl.printer",
    "SyncPrinter": "taxctl.syncprinter",
    "DocumentResponse": "taxctl.responses",
    "PrinterInfo": "taxctl.responses",
    "PrinterStatus": "taxctl.responses",
    "InvoiceRequest": "device.protocol.invoice",
    "CreditRequest": "device.protocol.invoice",
    "Line": "device.protocol.invoice",
    "Document": "device.protocol.document",
    "Kind": "device.protocol.document",
    "Status": "device.protocol.status",
    "TaxctlError": "device.errors",
    "Refused": "device.errors",
    "OutcomeUnknown": "device.errors",
    "PortError": "device.errors",
    "Port": "device.transport",
    "EmulatedPrinter": "device.emulator",
    "memory_pair": "device.loopback",
    "NoisyPort": "hostsim.noisyport",
    "NoiseSettings": "hostsim.noise",
    "PosClient": "syncd.posclient",
    "AsyncPosClient": "syncd.posclient",
    "PosError": "syncd.posclient",
}

# Spelled out for tools that read __all__ statically; a test checks it is _EXPORTS.
__all__ = [
    "AsyncPosClient",
    "CreditRequest",
    "Document",
    "DocumentResponse",
    "EmulatedPrinter",
    "InvoiceRequest",
    "Kind",
    "Line",
    "NoiseSettings",
    "NoisyPort",
    "OutcomeUnknown",
    "Port",
    "PortError",
    "PosClient",
    "PosError",
    "Printer",
    "PrinterInfo",
    "PrinterStatus",
    "Refused",
    "Status",
    "SyncPrinter",
    "TaxctlError",
    "__version__",
    "memory_pair",
]

if TYPE_CHECKING:
    from device.emulator import EmulatedPrinter
    from device.errors import OutcomeUnknown, PortError, Refused, TaxctlError
    from device.loopback import memory_pair
    from device.protocol.document import Document, Kind
    from device.protocol.invoice import CreditRequest, InvoiceRequest, Line
    from device.protocol.status import Status
    from device.transport import Port
    from hostsim.noise import NoiseSettings
    from hostsim.noisyport import NoisyPort
    from taxctl.printer import Printer
    from taxctl.responses import DocumentResponse, PrinterInfo, PrinterStatus
    from taxctl.syncprinter import SyncPrinter


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'taxctl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next look-up is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
