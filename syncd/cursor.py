"""syncd's own small state per device: where sync stands and what the chain rejected.

The device is the system of record: it knows which documents are synced
(`synced_through`) and holds every document until then. syncd only keeps
what the device cannot know — which documents the chain rejected, with
the chain's code and how often they were tried — plus the last counters
seen (for status while a device is unplugged) and the highest ever seen
(to catch a printer that went backwards). A few hundred bytes per
device, written atomically (temp file, fsync, rename).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from device.privatefile import write_private

CURSOR_FILE = "cursor.json"
VERSION = 1

log = logging.getLogger("taxctl.syncd")


@dataclass
class Rejection:
    counter: int
    code: str
    message: str
    attempts: int
    first_at: float
    last_at: float

    def due(self, now: float, max_attempts: int, interval: float) -> bool:
        """Should this document be submitted again now?"""
        return self.attempts < max_attempts and now - self.last_at >= interval

    def exhausted(self, max_attempts: int) -> bool:
        return self.attempts >= max_attempts


@dataclass
class DeviceCursor:
    counter: int = 0
    synced_through: int = 0
    port: str = ""
    rejected: dict[int, Rejection] = field(default_factory=dict)
    # The highest counter and synced_through ever seen (never lowered): a printer that
    # reports less went backwards (syncd/rollback.py).
    high_counter: int = 0
    high_synced: int = 0
    equivocated: int | None = None  # a counter the chain found signed twice

    def to_json(self) -> dict[str, Any]:
        return {
            "counter": self.counter,
            "synced_through": self.synced_through,
            "high_counter": self.high_counter,
            "high_synced_through": self.high_synced,
            "equivocated": self.equivocated,
            "port": self.port,
            "rejected": [
                asdict(r) for r in sorted(self.rejected.values(), key=lambda r: r.counter)
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeviceCursor:
        rejected = {}
        for item in data.get("rejected", []):
            r = Rejection(
                int(item["counter"]),
                str(item["code"]),
                str(item.get("message", "")),
                int(item.get("attempts", 1)),
                float(item.get("first_at", 0)),
                float(item.get("last_at", 0)),
            )
            rejected[r.counter] = r
        equivocated = data.get("equivocated")
        return cls(
            int(data.get("counter", 0)),
            int(data.get("synced_through", 0)),
            str(data.get("port", "")),
            rejected,
            int(data.get("high_counter", 0)),
            int(data.get("high_synced_through", 0)),
            None if equivocated is None else int(equivocated),
        )

    def record_rejection(self, counter: int, code: str, message: str, now: float) -> Rejection:
        old = self.rejected.get(counter)
        if old is None:
            old = Rejection(counter, code, message, 0, now, now)
            self.rejected[counter] = old
        old.attempts += 1
        old.code, old.message, old.last_at = code, message, now
        return old

    def forget_synced(self, synced_through: int) -> bool:
        """Drop rejections the device has since acknowledged; True if any were dropped."""
        stale = [c for c in self.rejected if c <= synced_through]
        for c in stale:
            del self.rejected[c]
        return bool(stale)


class CursorStore:
    def __init__(self, state: Path) -> None:
        self.path = state / CURSOR_FILE
        self.devices: dict[str, DeviceCursor] = {}
        self._dirty = False
        self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            # Only status history and rejection counts live here; the device has the
            # truth. Start afresh rather than refuse to run, but keep the old file.
            log.error("cannot read %s (%s); starting with an empty cursor", self.path, exc)
            with contextlib.suppress(OSError):
                self.path.replace(self.path.with_suffix(".damaged"))
            return
        if not isinstance(data, dict) or data.get("version") != VERSION:
            log.error("%s has an unknown format; starting with an empty cursor", self.path)
            return
        for device_id, entry in data.get("devices", {}).items():
            try:
                self.devices[device_id] = DeviceCursor.from_json(entry)
            except (KeyError, TypeError, ValueError) as exc:
                log.error("cursor entry for %s is damaged (%s); ignoring it", device_id, exc)

    def device(self, device_id: str) -> DeviceCursor:
        cursor = self.devices.get(device_id)
        if cursor is None:
            cursor = self.devices[device_id] = DeviceCursor()
        return cursor

    def mark_dirty(self) -> None:
        self._dirty = True

    @property
    def dirty(self) -> bool:
        return self._dirty

    def save(self) -> None:
        data = {
            "version": VERSION,
            "devices": {k: v.to_json() for k, v in sorted(self.devices.items())},
        }
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        write_private(tmp, json.dumps(data, indent=1, sort_keys=True).encode())
        os.replace(tmp, self.path)
        with contextlib.suppress(OSError):
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._dirty = False
