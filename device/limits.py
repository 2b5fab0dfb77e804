"""Offline limits: how long and how much a device may issue without uploading.

Pure rules over numbers the firmware tracks; the clock is whatever the
caller read. Exactly at a limit is still allowed; one second or one fen
beyond is refused. Only documents after `synced_through` count, and only a
verified chain receipt moves `synced_through`, so nothing but a real upload
lifts a limit.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_OFFLINE_SECONDS = 72 * 3600
DEFAULT_OFFLINE_AMOUNT = 100_000_000  # one million yuan, in fen
DEFAULT_ONLINE_GRACE = 60


@dataclass(frozen=True, slots=True)
class Limits:
    offline_seconds: int = DEFAULT_OFFLINE_SECONDS
    offline_amount: int = DEFAULT_OFFLINE_AMOUNT
    online_grace: int = DEFAULT_ONLINE_GRACE

    def __post_init__(self) -> None:
        if self.offline_seconds < 0 or self.offline_amount < 0 or self.online_grace < 0:
            raise ValueError("offline limits must not be negative")


@dataclass(slots=True)
class Backlog:
    """What is not yet on the chain."""

    count: int = 0
    amount: int = 0  # sum of |total| of unsynced invoices and credit notes
    oldest_at: int | None = None  # issued_at of the oldest unsynced document

    def add(self, amount: int, issued_at: int) -> Backlog:
        oldest = self.oldest_at if self.oldest_at is not None else issued_at
        return Backlog(self.count + 1, self.amount + abs(amount), oldest)


def time_exceeded(limits: Limits, backlog: Backlog, now: int) -> bool:
    return backlog.oldest_at is not None and now - backlog.oldest_at > limits.offline_seconds


def amount_exceeded(limits: Limits, backlog: Backlog, amount: int = 0) -> bool:
    return backlog.amount + abs(amount) > limits.offline_amount


def is_offline(limits: Limits, backlog: Backlog, now: int) -> bool:
    """The document's `offline` flag: it waits behind unsynced documents older than the grace."""
    return backlog.oldest_at is not None and now - backlog.oldest_at > limits.online_grace
