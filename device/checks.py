"""Why the device refuses to sign now: one list, read by the issue path and by STATUS.

Each check looks at the firmware at device time `now` for a document of `amount` fen
and returns the refusal it stands for, or None. Issuing raises the first refusal;
STATUS lists the name of every one (`blocking`), so the two can never disagree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from device.limits import amount_exceeded, time_exceeded
from device.protocol.document import format_utc
from device.protocol.status import DeviceError, Status

if TYPE_CHECKING:
    from device.firmware import Firmware

Check = Callable[["Firmware", int, int], DeviceError | None]


@dataclass(frozen=True, slots=True)
class Gate:
    check: Check
    numbered: bool = False  # only for invoices and credit notes (reports pass it)
    on_issue: bool = True  # False: STATUS reports it, issuing tries and finds out


def _unregistered(fw: Firmware, now: int, amount: int) -> DeviceError | None:
    return DeviceError(Status.UNREGISTERED) if fw.credentials.cert is None else None


def _rolled_back(fw: Firmware, now: int, amount: int) -> DeviceError | None:
    if fw.rolled_back is None:
        return None
    return DeviceError(Status.JOURNAL_ROLLED_BACK, fw.rolled_back)


def _paper_out(fw: Firmware, now: int, amount: int) -> DeviceError | None:
    return DeviceError(Status.PAPER_OUT) if fw.paper_out else None


def _cover_open(fw: Firmware, now: int, amount: int) -> DeviceError | None:
    return DeviceError(Status.COVER_OPEN) if fw.cover_open else None


def _clock_backwards(fw: Firmware, now: int, amount: int) -> DeviceError | None:
    if now >= fw.head.last_time:
        return None
    return DeviceError(
        Status.CLOCK_BACKWARDS,
        f"device time {format_utc(now)} is before the last document "
        f"{format_utc(fw.head.last_time)}",
    )


def _capacity(fw: Firmware, now: int, amount: int) -> DeviceError | None:
    if fw.head.counter < fw.settings.capacity:
        return None
    return DeviceError(Status.STORAGE_FULL, f"capacity {fw.settings.capacity} documents")


def _disk_full(fw: Firmware, now: int, amount: int) -> DeviceError | None:
    # The last write found the disk full: the next one most likely will too.
    if not fw.journal.full:
        return None
    return DeviceError(Status.STORAGE_FULL, "the last journal write found the disk full")


def _numbers(fw: Firmware, now: int, amount: int) -> DeviceError | None:
    try:
        fw.credentials.peek_available()
    except DeviceError as exc:
        return exc
    return None


def _offline_time(fw: Firmware, now: int, amount: int) -> DeviceError | None:
    limits, backlog = fw.settings.limits, fw.backlog
    if not time_exceeded(limits, backlog, now):
        return None
    assert backlog.oldest_at is not None
    return DeviceError(
        Status.OFFLINE_TIME_LIMIT,
        f"oldest unsynced document is {now - backlog.oldest_at} s old, "
        f"limit {limits.offline_seconds} s",
    )


def _offline_amount(fw: Firmware, now: int, amount: int) -> DeviceError | None:
    limits, backlog = fw.settings.limits, fw.backlog
    if not amount_exceeded(limits, backlog, amount):
        return None
    return DeviceError(
        Status.OFFLINE_AMOUNT_LIMIT,
        f"unsynced {backlog.amount} + {abs(amount)} fen would exceed {limits.offline_amount}",
    )


# In the order issuing meets them (and STATUS lists them).
GATES = (
    Gate(_unregistered),
    Gate(_rolled_back),
    Gate(_paper_out),
    Gate(_cover_open),
    Gate(_clock_backwards),
    Gate(_capacity),
    Gate(_disk_full, on_issue=False),
    Gate(_numbers, numbered=True),
    Gate(_offline_time, numbered=True),
    Gate(_offline_amount, numbered=True),
)


def _refuse(fw: Firmware, now: int, amount: int, numbered: bool) -> None:
    for gate in GATES:
        if gate.on_issue and gate.numbered == numbered:
            error = gate.check(fw, now, amount)
            if error is not None:
                raise error


def check_document(fw: Firmware, now: int) -> None:
    """Raise what refuses any document now (reports are allowed past the offline limits)."""
    _refuse(fw, now, 0, numbered=False)


def check_numbered(fw: Firmware, now: int, amount: int) -> None:
    """Raise what refuses an invoice or credit note of `amount` fen now (a number left,
    the offline limits); after `check_document`."""
    _refuse(fw, now, amount, numbered=True)


def blocking(fw: Firmware, now: int) -> list[str]:
    """The name of every refusal an invoice of one fen would meet now, each once."""
    errors = (gate.check(fw, now, 1) for gate in GATES)
    return list(dict.fromkeys(error.status.name for error in errors if error is not None))
