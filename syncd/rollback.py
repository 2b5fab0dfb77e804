"""A printer that went backwards, or signed twice, gets nothing more to sign.

The printer's own anchor catches a journal that lost its tail, but not an
older copy of the whole state directory restored with its anchor. syncd
keeps, per printer, the highest counter and synced_through it has ever
seen (in the cursor file); a printer reporting less is refused
(409 DEVICE_ROLLED_BACK) until it is back where it was, that is until its
journal is restored (docs/operating.md). A printer the chain reports as
equivocating (two documents for one counter) is refused for good
(409 DEVICE_EQUIVOCATED): only retiring it ends that.
"""

from __future__ import annotations

import logging
import time

from syncd.cursor import CursorStore
from syncd.link import DeviceLink
from syncd.metrics import SyncdMetrics
from syncd.refusals import ApiCode

log = logging.getLogger("taxctl.syncd")

SAVE_EVERY = 1.0  # seconds: a rising high-water mark is written at most this often


class RollbackGuard:
    def __init__(self, cursors: CursorStore, metrics: SyncdMetrics | None = None) -> None:
        self.cursors = cursors
        self.metrics = metrics
        self._behind: dict[str, str] = {}  # device id -> why it is refused
        self._judged: dict[str, tuple[int, int]] = {}  # device id -> (link, connection)
        self._saved_at = 0.0

    def check_link(self, link: DeviceLink) -> None:
        """Judge a printer by the STATUS of each new connection: a printer only goes
        backwards across a restart, and a restart is a new connection. Within one, a
        heartbeat may be older than an answer already seen, so its counters only raise
        the marks."""
        device_id, status = link.device_id, link.status
        if device_id is None or status is None:
            return
        counter, synced = status.counter, status.synced_through
        connection = (id(link), link.connections)
        if self._judged.get(device_id) != connection:
            self._judged[device_id] = connection
            self._judge(device_id, counter, synced)
        else:
            self.observe(device_id, counter, synced)

    def observe(self, device_id: str | None, counter: int | None, synced: int | None) -> None:
        """Counters a printer reported within a connection: they only raise the marks."""
        if device_id is None or device_id in self._behind:
            return
        cursor = self.cursors.device(device_id)
        high_counter = max(cursor.high_counter, counter or 0)
        high_synced = max(cursor.high_synced, synced or 0)
        if (high_counter, high_synced) != (cursor.high_counter, cursor.high_synced):
            cursor.high_counter, cursor.high_synced = high_counter, high_synced
            self.cursors.mark_dirty()
            self._save_soon()

    def _judge(self, device_id: str, counter: int | None, synced: int | None) -> None:
        cursor = self.cursors.device(device_id)
        counter = cursor.high_counter if counter is None else counter
        synced = cursor.high_synced if synced is None else synced
        if counter < cursor.high_counter or synced < cursor.high_synced:
            why = (
                f"it reports counter {counter}, synced through {synced}; syncd saw counter "
                f"{cursor.high_counter}, synced through {cursor.high_synced}"
            )
            if device_id not in self._behind:
                log.critical("%s went backwards: %s; issuing on it is refused", device_id, why)
                if self.metrics:
                    self.metrics.device_rolled_back.set(1, device_id)
            self._behind[device_id] = why
            return
        if self._behind.pop(device_id, None) is not None:
            log.warning("%s is back at counter %d; issuing on it again", device_id, counter)
            if self.metrics:
                self.metrics.device_rolled_back.set(0, device_id)
        self.observe(device_id, counter, synced)

    def equivocated(self, device_id: str, counter: int) -> None:
        cursor = self.cursors.device(device_id)
        if cursor.equivocated is None:
            log.critical(
                "%s: the chain holds another document for counter %d (equivocation); "
                "issuing on it is refused",
                device_id,
                counter,
            )
            cursor.equivocated = counter
            self.cursors.mark_dirty()
            self._save_soon(force=True)
        if self.metrics:
            self.metrics.device_equivocated.set(1, device_id)

    def refusal(self, device_id: str | None) -> tuple[ApiCode, str] | None:
        """Why issuing on this printer is refused now, or None."""
        if device_id is None:
            return None
        cursor = self.cursors.devices.get(device_id)
        if cursor is not None and cursor.equivocated is not None:
            return ApiCode.DEVICE_EQUIVOCATED, f"counter {cursor.equivocated} was signed twice"
        why = self._behind.get(device_id)
        return None if why is None else (ApiCode.DEVICE_ROLLED_BACK, why)

    def export(self) -> None:
        """Gauges for what is on record (at start, for equivocations found earlier)."""
        if not self.metrics:
            return
        for device_id, cursor in self.cursors.devices.items():
            if cursor.equivocated is not None:
                self.metrics.device_equivocated.set(1, device_id)

    def _save_soon(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._saved_at < SAVE_EVERY:
            return  # the status loop saves a dirty cursor within its interval
        self._saved_at = now
        try:
            self.cursors.save()
        except OSError as exc:
            log.error("cannot save the sync cursor: %s", exc)
