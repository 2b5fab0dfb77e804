"""The device's write path: requests that change the journal, in arrival order.

Consecutive issuing requests form one group: each is validated and signed
on top of the previous one, then the whole group is committed in a single
fsynced transaction (group commit), and only then are the responses sent.
The next group is signed while the previous one's commit runs in the
journal thread (sqlite releases the GIL during the fsync), so the device
is never idle waiting for the disk. If a commit fails, the firmware's
in-memory state is restored to before that group, its documents are
refused, and the group signed on top of it is signed again: nothing
half-written, nothing acknowledged that is not durable.

An ACK_SYNC right behind a group is checked against the committed journal
as it would be alone (its receipts can only name documents a host fetched,
all committed before it arrived) and its meta joins the group's
transaction: one fsync and one journal round trip for both. It is applied
and answered once that transaction is durable, before anything after it is
signed, as when it commits alone; if the transaction fails it is refused
with the group.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from device.firmware import Firmware, Snapshot, Write
from device.handlers import ISSUES, UPDATES
from device.journal import Batch, JournalError, StorageFull
from device.journal_thread import JournalThread
from device.protocol.commands import Command
from device.protocol.status import DeviceError, Status, internal_error

log = logging.getLogger("taxctl.device")

MAX_GROUP = 512
YIELD_EVERY = 4
JOINS = frozenset({Command.ACK_SYNC})  # writes whose meta may ride in the group before them

Reply = Callable[[int, dict[str, Any]], None]  # (status, body)


@dataclass(slots=True)
class WriteRequest:
    command: Command
    body: Any
    request_id: int
    digest: bytes
    reply: Reply


Answer = tuple[WriteRequest, int, dict[str, Any]]  # (request, status, body) to send


@dataclass(slots=True)
class _Flight:
    """A group being committed: the state before it, its answers, and the outcome
    (set by `_committed`, in the loop, once the journal thread is done)."""

    before: Snapshot
    results: list[Answer]
    batch: Batch
    done: asyncio.Future[DeviceError | None]
    joined: tuple[WriteRequest, Write] | None = None  # an ACK_SYNC riding in `batch`


class Writer:
    def __init__(self, fw: Firmware) -> None:
        self.fw = fw
        self._queue: deque[WriteRequest] = deque()
        self._stopping = False
        # Set when there is something for `run` to do: a request, or a commit finished.
        self._wake: asyncio.Future[None] | None = None
        # One thread: commits are serial, and the event loop never waits on an fsync.
        self._journal = JournalThread()
        self._in_flight: _Flight | None = None

    def submit(self, request: WriteRequest) -> None:
        self._queue.append(request)
        self._wake_up()

    def _wake_up(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def run(self) -> None:
        """Process writes until `stop()`; everything queued before it is committed and answered."""
        loop = asyncio.get_running_loop()
        while True:
            if self._in_flight is not None and self._in_flight.done.done():
                # A failed commit is rolled back and answered even if nothing follows.
                await self._settle()
            if not self._queue:
                if self._stopping:
                    await self._settle()
                    return
                self._wake = loop.create_future()
                await self._wake
                self._wake = None
                continue
            items = [self._queue.popleft() for _ in range(min(len(self._queue), MAX_GROUP))]
            await self._process(items)

    def stop(self) -> None:
        """Ask `run` to finish what is queued and return (no request is cut in half)."""
        self._stopping = True
        self._wake_up()

    def close(self) -> None:
        self._journal.close()

    async def _process(self, items: list[WriteRequest]) -> None:
        start = 0
        while start < len(items):
            end = start
            while end < len(items) and items[end].command in ISSUES:
                end += 1
            if end > start:
                follower = items[end] if end < len(items) else None
                if follower is not None and follower.command not in JOINS:
                    follower = None
                joined = await self._issue_group(items[start:end], follower)
                start = end
                if joined:
                    # Nothing after the ACK is signed before it is applied, as when alone.
                    await self._settle()
                    start += 1
            else:
                await self._settle()  # other writes read committed state
                await self._write_one(items[start])
                start += 1

    async def _settle(self) -> bool:
        """Wait for the commit in flight. If it failed: put the firmware back to before
        that group (discarding whatever was signed on top of it), then refuse its
        requests. Only here, in the writer's own flow, is state rolled back, never
        in the middle of signing a group."""
        flight, self._in_flight = self._in_flight, None
        if flight is None:
            return True
        error = await flight.done
        if error is None:
            return True
        self.fw.restore(flight.before)
        self._send(
            [
                (it, error.status, error.to_body()) if code == Status.OK else (it, code, out)
                for it, code, out in flight.results
            ]
        )
        if flight.joined is not None:
            _answer(flight.joined[0], error.status, error.to_body())
        return False

    async def _issue_group(
        self, group: list[WriteRequest], follower: WriteRequest | None = None
    ) -> bool:
        """Sign a group and submit its commit; True if `follower` (an ACK_SYNC right
        behind it) joined the commit and is answered with it."""
        snapshot = self.fw.snapshot()
        results = await self._sign_group(group)
        if not await self._settle():
            # The group before was refused and rolled back, taking this group's
            # documents (signed on top of it) with it: sign them again.
            snapshot = self.fw.snapshot()
            results = await self._sign_group(group)
        batch = self.fw.take_batch()
        if not batch:
            self._send(results)
            return False
        flight = _Flight(snapshot, results, batch, asyncio.get_running_loop().create_future())
        if follower is not None and batch.documents:
            flight.joined = self._join(follower, batch, results)
        self._in_flight = flight
        # The anchor is written in the same job, after the commit: nothing is answered
        # before both are durable.
        self._journal.submit(partial(self._committed, flight), self.fw.commit_documents, batch)
        return follower is not None and batch.documents != []

    def _join(
        self, item: WriteRequest, batch: Batch, results: list[Answer]
    ) -> tuple[WriteRequest, Write] | None:
        """Check the ACK_SYNC behind a group now, on the committed journal, and put its
        meta in the group's batch; a refusal is answered with the group's answers."""
        try:
            write = UPDATES[item.command](self.fw, item.body)
            assert write.meta is not None, "a joining write says what it stores"
        except Exception as exc:
            error = refusal(exc, item.command.name)
            results.append((item, error.status, error.to_body()))
            return None
        batch.meta.update(write.meta)
        return item, write

    async def _sign_group(self, group: list[WriteRequest]) -> list[Answer]:
        results: list[Answer] = []
        for index, item in enumerate(group):
            if index and index % YIELD_EVERY == 0:
                # Let the previous group's commit completion send its replies, and the
                # port be read, instead of holding them until this group is signed.
                await asyncio.sleep(0)
            try:
                out = ISSUES[item.command](self.fw, item.body, (item.request_id, item.digest))
            except Exception as exc:
                error = refusal(exc, item.command.name)
                results.append((item, error.status, error.to_body()))
            else:
                results.append((item, Status.OK, out))
        return results

    def _committed(self, flight: _Flight, _: None, error: BaseException | None) -> None:
        """In the loop, as soon as the journal thread is done with a group: answer it.
        Runs while the next group is signed, so on failure it touches nothing and
        leaves rollback and refusals to _settle. (Behind a joined ACK_SYNC nothing is
        signed until this ran: the writer waits for it, so applying the ACK here is
        what applying it alone after its own commit was.)"""
        if error is None:
            self.fw.committed_batch(flight.batch)
            self._send(flight.results)
            if flight.joined is not None:
                _finish(*flight.joined)
            flight.done.set_result(None)
        else:
            what = f"committing {len(flight.batch.documents)} documents"
            flight.done.set_result(refusal(error, what))
        self._wake_up()

    @staticmethod
    def _send(results: list[Answer]) -> None:
        for item, code, out in results:
            _answer(item, code, out)

    async def _write_one(self, item: WriteRequest) -> None:
        """One non-issuing write: the firmware checks it, its one write is committed in the
        journal thread, then the firmware's in-memory change and answer follow."""
        try:
            write = UPDATES[item.command](self.fw, item.body)
            stored = None if write.store is None else await self._journal.run(write.store)
        except Exception as exc:
            error = refusal(exc, item.command.name)
            _answer(item, error.status, error.to_body())
            return
        _finish(item, write, stored)


def refusal(exc: BaseException, what: str) -> DeviceError:
    """The writer's one error policy: the answer to a request it could not carry out.
    A refusal stands; a full disk is STORAGE_FULL; any other journal failure or a bug
    refuses that request only (and is logged), and the device stays up."""
    if isinstance(exc, DeviceError):
        return exc
    if isinstance(exc, StorageFull):
        log.error("%s: the journal is full: %s", what, exc)
        return DeviceError(Status.STORAGE_FULL, str(exc))
    # A journal error is the disk's doing; anything else is a bug: show where.
    log.error("%s failed: %s", what, exc, exc_info=None if isinstance(exc, JournalError) else exc)
    return internal_error(exc)


def _finish(item: WriteRequest, write: Write, stored: Any = None) -> None:
    """A write's in-memory change and answer, once what it stored (alone, or joined with
    a batch) is durable."""
    try:
        body = write.finish(stored)
    except Exception as exc:
        error = refusal(exc, item.command.name)
        _answer(item, error.status, error.to_body())
    else:
        _answer(item, Status.OK, body)


def _answer(item: WriteRequest, code: int, out: dict[str, Any]) -> None:
    """Hand one answer to the link. The server's reply never raises; if one still did,
    losing that answer (the host asks again) is better than losing the writer."""
    try:
        item.reply(code, out)
    except Exception:
        log.exception("the answer to request 0x%x was lost", item.request_id)
