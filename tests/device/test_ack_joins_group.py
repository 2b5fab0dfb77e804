"""An ACK_SYNC right behind a group of issues rides in the group's transaction.

One fsync for both; the ACK is still checked against the committed journal, applied
and answered only once the transaction is durable, refused with the group if it fails,
and what comes after it sees it applied, as when it commits alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from device.app import open_device
from device.firmware import Firmware
from device.journal import Batch, JournalError
from device.protocol import codec
from device.protocol.commands import Command
from device.protocol.status import Status
from device.writer import Writer, WriteRequest
from tests.device.conftest import INVOICE, wide_limits
from tests.device.test_sync_bookkeeping import oracle_backlog
from tests.helpers import SigningConsortium

Answers = dict[int, tuple[int, dict[str, Any]]]


class Rig:
    """A writer on a firmware with no server: requests in, answers by request id."""

    def __init__(self, fw: Firmware) -> None:
        self.fw = fw
        self.writer = Writer(fw)
        self.answers: Answers = {}
        self.batches: list[Batch] = []
        self._rid = 0
        commit = fw.journal.commit

        def recording(batch: Batch) -> None:
            self.batches.append(batch)
            commit(batch)

        fw.journal.commit = recording  # type: ignore[method-assign]

    def submit(self, command: Command, body: Any) -> int:
        self._rid += 1
        rid = self._rid

        def reply(status: int, out: dict[str, Any]) -> None:
            self.answers[rid] = (status, out)

        digest = codec.encode([rid])[:16]
        self.writer.submit(WriteRequest(command, body, rid, digest, reply))
        return rid

    async def drain(self) -> None:
        task = asyncio.create_task(self.writer.run())
        self.writer.stop()
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    fw = open_device(tmp_path / "state", training=True, limits=wide_limits())
    made = Rig(fw)
    yield made
    made.writer.close()
    fw.close()


def receipt_body(fw: Firmware, chain: SigningConsortium, counter: int) -> dict[str, Any]:
    doc = fw.journal.documents(counter, max_count=1, max_bytes=10**9)
    return {"receipts": chain.receipts(doc, fw.settings.device_id), "consortium": chain.raw}


def committed_docs(fw: Firmware, count: int) -> None:
    for _ in range(count):
        fw.issue(INVOICE)
    fw.commit_pending()


async def test_an_ack_behind_a_group_commits_with_it(rig: Rig) -> None:
    fw, chain = rig.fw, SigningConsortium()
    committed_docs(fw, 3)
    rig.batches.clear()
    issues = [rig.submit(Command.ISSUE, INVOICE) for _ in range(3)]
    ack = rig.submit(Command.ACK_SYNC, receipt_body(fw, chain, 3))
    after = rig.submit(Command.ISSUE, INVOICE)  # behind the ACK: sees it applied
    await rig.drain()
    assert all(rig.answers[rid][0] == Status.OK for rid in [*issues, ack, after])
    body = rig.answers[ack][1]
    assert body["synced_through"] == 3 and body["accepted"] == 1
    # One transaction held the group's documents and the ACK's meta.
    assert [len(b.documents) for b in rig.batches] == [3, 1]
    assert rig.batches[0].meta["synced_through"] == 3
    assert fw.journal.meta("synced_through") == 3 == fw.synced_through
    assert fw.credentials.consortium is not None
    assert fw.backlog == oracle_backlog(fw) and fw.backlog.count == 4


async def test_a_failed_joined_commit_refuses_the_ack_too(rig: Rig) -> None:
    fw, chain = rig.fw, SigningConsortium()
    committed_docs(fw, 2)
    commit = fw.journal.commit
    failing = True

    def fail_once(batch: Batch) -> None:
        nonlocal failing
        if failing and batch.documents:
            failing = False
            raise JournalError("injected write error")
        commit(batch)

    fw.journal.commit = fail_once  # type: ignore[method-assign]
    issues = [rig.submit(Command.ISSUE, INVOICE) for _ in range(2)]
    ack = rig.submit(Command.ACK_SYNC, receipt_body(fw, chain, 2))
    await rig.drain()
    assert {rig.answers[rid][0] for rid in [*issues, ack]} == {Status.INTERNAL_ERROR}
    # Nothing of either happened: no documents, nothing synced, no consortium held.
    assert fw.head.counter == fw.committed == 2 and fw.journal.count() == 2
    assert fw.synced_through == 0 and fw.journal.meta("synced_through") is None
    assert fw.credentials.consortium is None and fw.journal.meta("consortium") is None
    assert fw.backlog == oracle_backlog(fw)


async def test_a_bad_receipt_behind_a_group_is_refused_alone(rig: Rig) -> None:
    fw, chain = rig.fw, SigningConsortium()
    committed_docs(fw, 2)
    body = receipt_body(fw, chain, 2)
    body["receipts"][0]["doc_hash"] = bytes(32)  # no longer leads to the block's root
    issues = [rig.submit(Command.ISSUE, INVOICE) for _ in range(2)]
    ack = rig.submit(Command.ACK_SYNC, body)
    await rig.drain()
    assert all(rig.answers[rid][0] == Status.OK for rid in issues)
    assert rig.answers[ack][0] == Status.RECEIPT_INVALID
    assert fw.committed == 4 and fw.synced_through == 0
    assert fw.journal.meta("synced_through") is None


async def test_an_ack_that_moves_nothing_is_answered_with_the_group(rig: Rig) -> None:
    fw, chain = rig.fw, SigningConsortium()
    committed_docs(fw, 2)
    first = receipt_body(fw, chain, 2)
    fw.carry_out(fw.ack_sync(first))
    again = {"receipts": first["receipts"]}  # already synced: counts, moves nothing
    issue = rig.submit(Command.ISSUE, INVOICE)
    ack = rig.submit(Command.ACK_SYNC, again)
    await rig.drain()
    assert rig.answers[issue][0] == Status.OK
    status, body = rig.answers[ack]
    assert status == Status.OK and body["synced_through"] == 2 and body["accepted"] == 1
    assert fw.synced_through == 2 and fw.committed == 3
