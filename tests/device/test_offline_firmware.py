"""The firmware driven with no server: commit_pending, carry_out, and the one list of
checks behind both STATUS's `blocking` and the issue path's refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from device import handlers
from device.app import open_device
from device.firmware import Firmware
from device.protocol.commands import Command
from device.protocol.document import Kind, format_utc
from device.protocol.status import DeviceError, Status
from tests.device.conftest import INVOICE, wide_limits


def test_commit_pending_makes_what_was_issued_durable(tmp_path: Path) -> None:
    fw = open_device(tmp_path / "state", training=True, limits=wide_limits())
    fw.issue(INVOICE)
    fw.issue(INVOICE)
    batch = fw.commit_pending()
    assert [row.counter for row in batch.documents] == [1, 2]
    assert fw.committed == 2 and fw.since_start.documents == 2
    assert not fw.commit_pending()  # nothing issued since: nothing written
    fw.close()
    again = open_device(tmp_path / "state")
    # the anchor moved with the journal: reopened, nothing reads as rolled back
    assert again.head.counter == 2 and again.rolled_back is None
    assert again.journal.document(2) is not None
    again.close()


def test_carry_out_runs_a_write_command_as_the_writer_would(fw: Firmware) -> None:
    ahead = format_utc(fw.now() + 60)
    assert fw.carry_out(fw.set_time({"time": ahead})) == {"time": ahead}
    assert fw.journal.meta("time_offset") == fw.time_offset  # journaled, then in memory


def test_a_refused_write_changes_nothing(fw: Firmware) -> None:
    offset = fw.time_offset
    with pytest.raises(DeviceError) as err:
        fw.set_time({"time": format_utc(fw.now() - 60)})
    assert err.value.status == Status.CLOCK_BACKWARDS
    assert fw.time_offset == offset and fw.journal.meta("time_offset") is None


@pytest.mark.parametrize(
    ("switch", "status"), [("paper_out", Status.PAPER_OUT), ("cover_open", Status.COVER_OPEN)]
)
def test_status_lists_exactly_what_refuses_an_invoice(
    fw: Firmware, switch: str, status: Status
) -> None:
    assert fw.blocking() == []
    setattr(fw, switch, True)
    assert fw.blocking() == [status.name]
    with pytest.raises(DeviceError) as err:
        fw.issue(INVOICE)
    assert err.value.status == status
    setattr(fw, switch, False)
    assert fw.issue(INVOICE)["counter"] == 1


def test_an_exhausted_segment_blocks_invoices_but_not_reports(fw: Firmware) -> None:
    for segment in fw.credentials.segments:
        fw.credentials.next_number[segment.id] = segment.end + 1
    assert fw.blocking() == [Status.SEGMENT_EXHAUSTED.name]
    with pytest.raises(DeviceError) as err:
        fw.issue(INVOICE)
    assert err.value.status == Status.SEGMENT_EXHAUSTED
    assert fw.report(Kind.X_REPORT)["counter"] == 1


def test_every_command_has_exactly_one_handler() -> None:
    routed = [*handlers.READS, *handlers.ISSUES, *handlers.UPDATES]
    assert sorted(routed) == sorted(Command) and len(set(routed)) == len(routed)
