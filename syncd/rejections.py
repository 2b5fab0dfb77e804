"""One device's rejected documents: recorded, retried a few times, reported.

The chain rejects a document with a code; the rejection is kept on the
device's cursor (so it survives a restart), the document is skipped until
it is due again (`sync.reject_retry_interval`, at most `sync.reject_retries`
submissions), an equivocation is handed to the rollback guard, and the
rejections by code are a gauge. A receipt past a rejected document means
the chain took it after all: the rejection is forgotten.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from device.protocol.chainapi import Code
from syncd.answers import code_label
from syncd.cursor import CursorStore
from syncd.metrics import SyncdMetrics
from syncd.rollback import RollbackGuard
from syncd.verdict import Rejected, earliest_due, skip_mask

if TYPE_CHECKING:
    from syncd.engine import SyncSettings

log = logging.getLogger("taxctl.syncd")


class Rejections:
    def __init__(
        self,
        cursors: CursorStore,
        settings: SyncSettings,
        clock: Callable[[], float],
        *,
        metrics: SyncdMetrics | None = None,
        guard: RollbackGuard | None = None,
    ) -> None:
        self.cursors = cursors
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        self.guard = guard

    def skipped(self, device_id: str, first: int, count: int) -> list[bool]:
        """For documents first..first+count-1: True where a rejected one is not due again."""
        s = self.settings
        cursor = self.cursors.device(device_id)
        return skip_mask(
            first, count, cursor, self.clock(), s.reject_retries, s.reject_retry_interval
        )

    def next_due(self, device_id: str | None) -> float | None:
        """When the next rejected document is due for another try (None: never)."""
        if device_id is None:
            return None
        s = self.settings
        cursor = self.cursors.device(device_id)
        return earliest_due(cursor, self.clock(), s.reject_retries, s.reject_retry_interval)

    def record(self, device_id: str, rejected: Sequence[Rejected]) -> None:
        cursor = self.cursors.device(device_id)
        now = self.clock()
        for r in rejected:
            if r.code == Code.EQUIVOCATION and self.guard is not None:
                self.guard.equivocated(device_id, r.counter)
            entry = cursor.record_rejection(r.counter, r.code, r.message, now)
            if self.metrics:
                self.metrics.chain_errors.inc(1, code_label(r.code))
            left = self.settings.reject_retries - entry.attempts
            log.error(
                "%s: chain rejected document %d: %s %s (%s)",
                device_id,
                r.counter,
                r.code,
                r.message,
                f"will try {left} more time(s)" if left > 0 else "not retrying; needs an operator",
            )
        self.export(device_id)
        self.cursors.mark_dirty()

    def forget_synced(self, device_id: str, synced_through: int) -> None:
        """The device holds receipts through `synced_through`: no rejection below stands."""
        if self.cursors.device(device_id).forget_synced(synced_through):
            self.export(device_id)

    def export(self, device_id: str) -> None:
        if not self.metrics:
            return
        cursor = self.cursors.device(device_id)
        for key in [k for k in self.metrics.rejected.values if k[0] == device_id]:
            self.metrics.rejected.remove(*key)
        by_code: dict[str, int] = {}
        for r in cursor.rejected.values():
            label = code_label(r.code)
            by_code[label] = by_code.get(label, 0) + 1
        for code, n in by_code.items():
            self.metrics.rejected.set(n, device_id, code)

    def describe(self, device_id: str | None) -> list[dict[str, Any]]:
        if device_id is None:
            return []
        cursor = self.cursors.device(device_id)
        return [
            {
                "counter": r.counter,
                "code": r.code,
                "message": r.message,
                "attempts": r.attempts,
                "retrying": not r.exhausted(self.settings.reject_retries),
            }
            for r in sorted(cursor.rejected.values(), key=lambda r: r.counter)
        ]
