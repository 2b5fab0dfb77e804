"""DeviceLink: typed snapshots changed only through its intent methods; the client tells it
of failures."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import replace
from pathlib import Path

import pytest

from device.client import LinkError
from syncd.link import LinkState
from syncd.metrics import SyncdMetrics
from tests.device.conftest import INVOICE
from tests.syncd.unit.memory import FAST_LINK, memory_printer


async def test_the_snapshots_are_typed_and_frozen(tmp_path: Path) -> None:
    async with memory_printer(tmp_path) as printer:
        info, status = printer.link.info, printer.link.status
        assert info is not None and status is not None
        assert info.device_id == printer.link.device_id and len(info.public_key) == 32
        assert info.training and isinstance(info.segments, tuple)
        assert (status.counter, status.synced_through, status.pending) == (0, 0, 0)
        with pytest.raises(dataclasses.FrozenInstanceError):
            info.public_key = b""  # type: ignore[misc]


async def test_counters_only_move_forward_and_synced_documents_are_counted(
    tmp_path: Path,
) -> None:
    metrics = SyncdMetrics()
    async with memory_printer(tmp_path, metrics=metrics) as printer:
        link = printer.link
        device = link.device_id or ""
        assert link.note_counters(5, 3) == 3
        assert link.note_counters(4, 2) == 0  # an older answer lowers nothing
        assert link.status is not None and (link.status.counter, link.synced_through) == (5, 3)
        assert link.describe()["pending"] == 2
        assert metrics.synced_total.get(device) == 3
        assert metrics.pending.get(device) == 2


async def test_consortium_and_segments_change_through_the_link(tmp_path: Path) -> None:
    async with memory_printer(tmp_path) as printer:
        link = printer.link
        assert link.info is not None
        segments = len(link.info.segments)
        link.adopt_consortium(b"nodes")
        link.segment_loaded(b"segment", 42)
        assert link.info.consortium == b"nodes" and len(link.info.segments) == segments + 1
        assert link.status is not None and link.status.numbers_left == 42
        fresh = await link.refresh_info()  # the device's own word again
        assert link.info is fresh and fresh.consortium != b"nodes"


async def test_a_failed_request_makes_the_link_check_itself_at_once(tmp_path: Path) -> None:
    slow_heartbeat = replace(FAST_LINK, status_interval=60)
    async with memory_printer(tmp_path, slow_heartbeat) as printer:
        link = printer.link
        went_offline: list[str | None] = []
        link.on_change(lambda lk: went_offline.append(lk.last_error) if not lk.online else None)
        printer.client.response_timeout = 0.05
        printer.client.max_retries = 0
        # The printer stops answering (its end of the line is deaf): any request fails...
        device_end = printer.client.port.peer  # type: ignore[attr-defined]
        device_end.write = lambda data: None
        printer.client.port.write = lambda data: None  # type: ignore[method-assign]
        with pytest.raises(LinkError):
            await printer.client.issue(INVOICE)
        # ...and the link, told by its client, is offline well before the next heartbeat.
        async with asyncio.timeout(2):
            while not went_offline:
                await asyncio.sleep(0.01)
        assert "no answer" in (went_offline[0] or ""), went_offline
        assert link.state != LinkState.ONLINE
