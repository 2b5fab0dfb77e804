"""No rollback: a journal behind the device's anchor issues nothing.

The attack: losing the journal's WAL, or restoring an older copy of it,
silently put the printer back to an earlier counter; it then issued counter
1 and invoice number 00000001 again with different content. (The kill -9
and deleted WAL case with a real process is in tests/syncd/test_rollback.py.)
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from device.anchor import ANCHOR_FILE, SLOT
from device.journal import JOURNAL_FILE
from device.protocol.status import DeviceError, Status
from tests.device.conftest import INVOICE, Harness, wide_limits


def copy_journal(state: Path, to: Path) -> None:
    to.mkdir(exist_ok=True)
    for path in state.glob(JOURNAL_FILE + "*"):
        shutil.copy2(path, to / path.name)


def put_back_journal(saved: Path, state: Path) -> None:
    for path in state.glob(JOURNAL_FILE + "*"):
        path.unlink()
    for path in saved.iterdir():
        shutil.copy2(path, state / path.name)


async def assert_refuses_to_issue(h: Harness) -> None:
    before = h.snapshot()
    for call in (h.client.issue(INVOICE), h.client.x_report()):
        with pytest.raises(DeviceError) as err:
            await call
        assert err.value.status == Status.JOURNAL_ROLLED_BACK, err.value.text
    status = await h.client.status()
    assert "JOURNAL_ROLLED_BACK" in status["blocking"] and not status["can_issue"]
    assert h.snapshot() == before


async def test_an_older_journal_is_refused(start: Any, tmp_path: Path) -> None:
    h: Harness = await start(limits=wide_limits())
    first = await h.client.issue(INVOICE)
    await h.client.issue(INVOICE)
    await h.close()
    copy_journal(h.state, tmp_path / "saved")
    h = await start(state=h.state, clock=h.clock, limits=wide_limits())
    for _ in range(3):
        await h.client.issue(INVOICE)
    await h.close()
    put_back_journal(tmp_path / "saved", h.state)  # the journal of counter 2, anchor of 5
    h = await start(state=h.state, clock=h.clock, limits=wide_limits())
    assert h.fw.head.counter == 2
    await assert_refuses_to_issue(h)
    # The number of counter 3 is never issued a second time.
    assert h.fw.journal.document_by_number(first["code"], "00000003") is None


async def test_a_journal_with_another_history_is_refused(start: Any, tmp_path: Path) -> None:
    """Same length, other documents: the hash at the anchor's counter differs."""
    h: Harness = await start(limits=wide_limits())
    await h.close()
    copy_journal(h.state, tmp_path / "empty")
    empty_anchor = (h.state / ANCHOR_FILE).read_bytes()
    h = await start(state=h.state, clock=h.clock, limits=wide_limits())
    await h.client.issue(INVOICE)
    await h.close()
    anchor = (h.state / ANCHOR_FILE).read_bytes()
    put_back_journal(tmp_path / "empty", h.state)
    (h.state / ANCHOR_FILE).write_bytes(empty_anchor)
    h = await start(state=h.state, clock=h.clock, limits=wide_limits())
    await h.client.issue({**INVOICE, "buyer": None})  # another counter 1
    await h.close()
    (h.state / ANCHOR_FILE).write_bytes(anchor)
    h = await start(state=h.state, clock=h.clock, limits=wide_limits())
    assert h.fw.head.counter == 1
    await assert_refuses_to_issue(h)


async def test_an_edited_anchor_is_refused(start: Any) -> None:
    h: Harness = await start(limits=wide_limits())
    await h.client.issue(INVOICE)
    await h.close()
    path = h.state / ANCHOR_FILE
    data = bytearray(path.read_bytes())
    for slot in range(2):  # both slots: bump a byte inside each signed anchor
        data[slot * SLOT + 40] ^= 1
    path.write_bytes(bytes(data))
    h = await start(state=h.state, clock=h.clock, limits=wide_limits())
    await assert_refuses_to_issue(h)


async def test_a_torn_slot_leaves_the_other(start: Any) -> None:
    h: Harness = await start(limits=wide_limits())
    await h.client.issue(INVOICE)
    await h.client.issue(INVOICE)
    await h.close()
    path = h.state / ANCHOR_FILE
    data = bytearray(path.read_bytes())
    newest = 0 if h.fw.anchor._next_slot == 1 else 1
    data[newest * SLOT : (newest + 1) * SLOT] = bytes(SLOT)  # the last write torn
    path.write_bytes(bytes(data))
    h = await start(state=h.state, clock=h.clock, limits=wide_limits())
    assert (await h.client.issue(INVOICE))["counter"] == 3


async def test_a_missing_anchor_is_made_from_the_journal(start: Any) -> None:
    """A device from before anchors: its journal is taken as it is."""
    h: Harness = await start(limits=wide_limits())
    await h.client.issue(INVOICE)
    await h.close()
    (h.state / ANCHOR_FILE).unlink()
    h = await start(state=h.state, clock=h.clock, limits=wide_limits())
    assert (h.state / ANCHOR_FILE).exists()
    assert (await h.client.issue(INVOICE))["counter"] == 2
    await h.close()
    h = await start(state=h.state, clock=h.clock, limits=wide_limits())
    assert h.fw.rolled_back is None
    assert h.fw.anchor.read() is not None and h.fw.anchor.read().counter == 2  # type: ignore[union-attr]
