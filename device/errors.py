"""The one exception hierarchy of the printer's host side.

Every error a host program gets from talking to a printer is one of three kinds, and the
kind says what to do:

    TaxctlError
    ├── Refused         the device refused the request and did nothing; `status` is the
    │                   wire status code (device.protocol.status.Status), stable per cause
    ├── OutcomeUnknown  no readable answer came back: the device may have carried the
    │                   request out; send it again with the same request id (always safe,
    │                   the device answers a repeat with the first answer)
    └── PortError       the port cannot be opened or failed (also an OSError)

The concrete classes live where they are raised and subclass these: DeviceError
(device.protocol.status) is a Refused; LinkError, NoAnswer and UnreadableResponse
(device.client) are OutcomeUnknown. `taxctl` re-exports the hierarchy for integrators.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from device.protocol.status import Status


class TaxctlError(Exception):
    """Base of every error the printer API raises on purpose."""


class Refused(TaxctlError):
    """The device refused: nothing was written, nothing was printed.

    `status` is the status code of the response frame; `code` its stable name (what a
    till shows or logs); `detail` what is specific to this refusal.
    """

    status: Status
    detail: str = ""

    @property
    def code(self) -> str:
        return self.status.name


class OutcomeUnknown(TaxctlError):
    """No answer that can be read: for an issuing request the device may have issued.

    Send the request again with the same request id before treating it as lost. The
    Printer API sets `request_id` to the id to send again.
    """

    request_id: int | None = None


class PortError(OSError, TaxctlError):
    """A port could not be opened or failed; the message says what to do."""
