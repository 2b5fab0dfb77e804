"""verdict.judge and skip_mask: what a chain answer means, without I/O."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncd.chainport import SubmitResult, SubmitStatus
from syncd.cursor import CursorStore
from syncd.verdict import Next, earliest_due, judge, skip_mask

OK, DUP = SubmitStatus.COMMITTED, SubmitStatus.DUPLICATE


def admitted(status: SubmitStatus, counter: int) -> SubmitResult:
    return SubmitResult(status, {"counter": counter}, counter=counter)


def rejected(code: str) -> SubmitResult:
    return SubmitResult(SubmitStatus.REJECTED, code=code, message="no")


def test_the_highest_admitted_receipt_is_the_one_to_acknowledge() -> None:
    verdict = judge([3, 4, 5], [admitted(DUP, 3), admitted(OK, 4), admitted(OK, 5)])
    assert (verdict.admitted, verdict.ack_counter, verdict.next) == (3, 5, Next.CONTINUE)
    assert verdict.ack_receipt == {"counter": 5}
    assert verdict.statuses == {"duplicate": 1, "committed": 2}


def test_documents_not_final_yet_are_retried_soon() -> None:
    results = [admitted(OK, 1), SubmitResult(SubmitStatus.PENDING), SubmitResult(OK)]
    verdict = judge([1, 2, 3], results)
    # an admitted result without a receipt is asked for again, like a pending one
    assert (verdict.ack_counter, verdict.unresolved, verdict.next) == (1, (2, 3), Next.RETRY)


def test_documents_held_behind_a_rejected_one_park_the_device() -> None:
    verdict = judge([1, 2], [rejected("totals_mismatch"), SubmitResult(SubmitStatus.HELD)])
    assert verdict.next == Next.PARK and verdict.ack_counter is None
    assert [(r.counter, r.code) for r in verdict.rejected] == [(1, "totals_mismatch")]


def test_a_rejection_after_the_unresolved_ones_does_not_park() -> None:
    verdict = judge([1, 2], [SubmitResult(SubmitStatus.PENDING), rejected("number_used")])
    assert verdict.next == Next.RETRY


def test_results_and_documents_must_pair_up() -> None:
    with pytest.raises(ValueError):
        judge([1, 2], [admitted(OK, 1)])


def test_skip_mask_skips_rejections_until_they_are_due(tmp_path: Path) -> None:
    cursor = CursorStore(tmp_path).device("TC000000000001")
    assert skip_mask(1, 3, cursor, 100.0, 3, 10.0) == [False, False, False]
    cursor.record_rejection(2, "totals_mismatch", "no", 100.0)
    assert skip_mask(1, 3, cursor, 105.0, 3, 10.0) == [False, True, False]
    assert skip_mask(1, 3, cursor, 111.0, 3, 10.0) == [False, False, False]
    assert earliest_due(cursor, 105.0, 3, 10.0) == 110.0
    for at in (111.0, 122.0):
        cursor.record_rejection(2, "totals_mismatch", "no", at)
    # three attempts made: never due again, skipped for good
    assert skip_mask(1, 3, cursor, 10_000.0, 3, 10.0) == [False, True, False]
    assert earliest_due(cursor, 10_000.0, 3, 10.0) is None
