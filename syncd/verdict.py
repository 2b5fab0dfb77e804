"""Sync decisions, without I/O: what a chain answer means for the device and the next step.

The chain answers a submission with one result per document: committed or
duplicate (on the chain, with a receipt), pending or held (not final yet,
ask again), or rejected (with the chain's code). From that follow

- the ACK to give the device: the receipt of the highest admitted counter
  (a receipt for counter c acknowledges every document up to c, since the
  chain admits a document only on top of its predecessor), so one receipt
  per batch;
- which rejections to record;
- what to do next: carry on, retry soon (pending/held), or park (documents
  held behind a rejected one: retrying quickly cannot help).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from device.protocol.chainapi import ADMITTED, UNRESOLVED, SubmitStatus
from syncd.chainport import SubmitResult
from syncd.cursor import DeviceCursor

__all__ = ["ADMITTED", "UNRESOLVED", "Next", "Rejected", "SubmitStatus", "Verdict", "judge"]


class Next(StrEnum):
    CONTINUE = "continue"
    RETRY = "retry"  # some documents are not final yet: ask again after a short backoff
    PARK = "park"  # progress is blocked by a rejected document: wait the long interval


@dataclass(frozen=True)
class Rejected:
    counter: int
    code: str
    message: str


@dataclass(frozen=True)
class Verdict:
    admitted: int
    ack_counter: int | None
    ack_receipt: dict[str, Any] | None
    rejected: tuple[Rejected, ...] = ()
    unresolved: tuple[int, ...] = ()
    next: Next = Next.CONTINUE
    statuses: dict[str, int] = field(default_factory=dict)


def judge(counters: Sequence[int], results: Sequence[SubmitResult]) -> Verdict:
    """Interpret one submission's results (in the order the documents were sent), as the
    chain port hands them: typed and checked, so a status is one the API defines and there
    is one result per document (`answers.check_result_count`)."""
    ack_counter: int | None = None
    ack_receipt: dict[str, Any] | None = None
    rejected: list[Rejected] = []
    unresolved: list[int] = []
    statuses: dict[str, int] = {}
    admitted = 0
    first_rejected: int | None = None
    for counter, result in zip(counters, results, strict=True):
        status = result.status
        statuses[status.value] = statuses.get(status.value, 0) + 1
        if status in ADMITTED:
            receipt = result.receipt
            if receipt is None:
                unresolved.append(counter)  # admitted but no receipt to show for it: ask again
                continue
            admitted += 1
            if ack_counter is None or counter > ack_counter:
                ack_counter, ack_receipt = counter, receipt
        elif status in UNRESOLVED:
            unresolved.append(counter)
        else:
            rejected.append(Rejected(counter, result.code or "UNKNOWN", result.message or ""))
            if first_rejected is None:
                first_rejected = counter
    if unresolved:
        blocked = first_rejected is not None and first_rejected < unresolved[0]
        nxt = Next.PARK if blocked else Next.RETRY
    else:
        nxt = Next.CONTINUE
    return Verdict(
        admitted, ack_counter, ack_receipt, tuple(rejected), tuple(unresolved), nxt, statuses
    )


def skip_mask(
    first: int,
    count: int,
    cursor: DeviceCursor,
    now: float,
    max_attempts: int,
    interval: float,
) -> list[bool]:
    """For documents first..first+count-1: True where a rejected document is not due again."""
    if not cursor.rejected:
        return [False] * count
    mask = []
    for counter in range(first, first + count):
        rejection = cursor.rejected.get(counter)
        mask.append(rejection is not None and not rejection.due(now, max_attempts, interval))
    return mask


def earliest_due(
    cursor: DeviceCursor, now: float, max_attempts: int, interval: float
) -> float | None:
    """When the next rejected document becomes due for another try (None: never)."""
    times = [
        r.last_at + interval for r in cursor.rejected.values() if not r.exhausted(max_attempts)
    ]
    return min(times) if times else None
