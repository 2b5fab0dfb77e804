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
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from device import sync
from device.firmware import Firmware, Snapshot
from device.journal import Batch, JournalError, StorageFull
from device.journal_thread import JournalThread
from device.protocol.commands import ISSUING, Command
from device.protocol.document import Kind, format_utc
from device.protocol.status import DeviceError, Status, internal_error

log = logging.getLogger("taxctl.device")

MAX_GROUP = 512
YIELD_EVERY = 4

Reply = Callable[[int, dict[str, Any]], None]  # (status, body)


@dataclass(slots=True)
class WriteRequest:
    command: Command
    body: Any
    request_id: int
    digest: bytes
    reply: Reply


Result = tuple[WriteRequest, int, dict[str, Any]]


@dataclass(slots=True)
class _Flight:
    """A group being committed: the state before it, its answers, and the outcome
    (set by `_committed`, in the loop, once the journal thread is done)."""

    before: Snapshot
    results: list[Result]
    batch: Batch
    done: asyncio.Future[DeviceError | None]


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

    async def _commit(self, batch: Batch) -> None:
        await self._journal.run(self.fw.journal.commit, batch)

    async def _process(self, items: list[WriteRequest]) -> None:
        start = 0
        while start < len(items):
            end = start
            while end < len(items) and items[end].command in ISSUING:
                end += 1
            if end > start:
                await self._issue_group(items[start:end])
                start = end
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
        return False

    async def _issue_group(self, group: list[WriteRequest]) -> None:
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
            return
        flight = _Flight(snapshot, results, batch, asyncio.get_running_loop().create_future())
        self._in_flight = flight
        # The anchor is written in the same job, after the commit: nothing is answered
        # before both are durable.
        self._journal.submit(partial(self._committed, flight), self.fw.commit_documents, batch)

    async def _sign_group(self, group: list[WriteRequest]) -> list[Result]:
        results: list[Result] = []
        for index, item in enumerate(group):
            if index and index % YIELD_EVERY == 0:
                # Let the previous group's commit completion send its replies, and the
                # port be read, instead of holding them until this group is signed.
                await asyncio.sleep(0)
            try:
                results.append((item, Status.OK, self._issue(item)))
            except DeviceError as exc:
                results.append((item, exc.status, exc.to_body()))
            except Exception as exc:  # a bug: refuse this request, keep the device up
                log.exception("issuing failed")
                error = internal_error(exc)
                results.append((item, Status.INTERNAL_ERROR, error.to_body()))
        return results

    def _committed(self, flight: _Flight, _: None, error: BaseException | None) -> None:
        """In the loop, as soon as the journal thread is done with a group: answer it.
        Runs while the next group is signed, so on failure it touches nothing and
        leaves rollback and refusals to _settle."""
        if error is None:
            self.fw.committed_batch(flight.batch)
            self.fw.run.committed(len(flight.batch.documents))
            self._send(flight.results)
            flight.done.set_result(None)
        else:
            status = (
                Status.STORAGE_FULL if isinstance(error, StorageFull) else Status.INTERNAL_ERROR
            )
            log.error(
                "journal commit failed, %d documents refused: %s",
                len(flight.batch.documents),
                error,
                exc_info=None if isinstance(error, JournalError) else error,  # a bug: show where
            )
            flight.done.set_result(DeviceError(status, str(error)))
        self._wake_up()

    @staticmethod
    def _send(results: list[Result]) -> None:
        for item, code, out in results:
            _answer(item, code, out)

    def _issue(self, item: WriteRequest) -> dict[str, Any]:
        request = (item.request_id, item.digest)
        if item.command == Command.ISSUE:
            return self.fw.issue(item.body, request)
        if item.command == Command.CREDIT:
            return self.fw.credit(item.body, request)
        if item.body not in (None, {}):
            raise DeviceError(Status.BAD_REQUEST, f"{item.command.name} takes an empty body")
        kind = Kind.X_REPORT if item.command == Command.X_REPORT else Kind.Z_REPORT
        return self.fw.report(kind, request)

    async def _write_one(self, item: WriteRequest) -> None:
        """One non-issuing write. Its checks all run before its one commit, and only
        in-memory assignments after it, so a refusal or a bug leaves nothing half-written."""
        try:
            body = await self._execute(item)
        except DeviceError as exc:
            _answer(item, exc.status, exc.to_body())
        except StorageFull as exc:
            _answer(item, Status.STORAGE_FULL, DeviceError(Status.STORAGE_FULL, str(exc)).to_body())
        except JournalError as exc:
            _answer(item, Status.INTERNAL_ERROR, internal_error(exc).to_body())
        except Exception as exc:  # a bug: refuse this request, keep the device up
            log.exception("%s failed", item.command.name)
            _answer(item, Status.INTERNAL_ERROR, internal_error(exc).to_body())
        else:
            _answer(item, Status.OK, body)

    async def _execute(self, item: WriteRequest) -> dict[str, Any]:
        fw = self.fw
        body = item.body
        if item.command == Command.ACK_SYNC:
            ack = sync.verify_ack(fw, body)
            now = fw.now()
            meta = fw.ack_meta(ack, now)
            if meta:
                await self._commit(Batch(meta=meta))
                fw.apply_ack(ack, meta, now)
                log.info("%s synced through %d", fw.settings.device_id, fw.synced_through)
            return {
                "synced_through": fw.synced_through,
                "accepted": len(body["receipts"]),
                "last_sync_at": format_utc(fw.last_sync_at) if fw.last_sync_at else None,
                "time": format_utc(fw.now()),
            }
        if item.command == Command.LOAD_CERT:
            raw = _bytes_field(body, "certificate")
            cert = fw.registry.check_certificate(raw)
            if fw.registry.cert is None:
                await self._commit(Batch(meta={"certificate": raw}))
                fw.registry.cert = cert
                log.info("%s registered to %s", fw.settings.device_id, cert.taxpayer["tax_id"])
            return {"device_id": cert.device_id, "taxpayer": cert.taxpayer, "serial": cert.serial}
        if item.command == Command.LOAD_SEGMENT:
            raw = _bytes_field(body, "segment")
            segment = fw.registry.check_segment(raw)
            if segment is not None:
                row = await self._journal.run(
                    fw.journal.add_segment, segment.code, segment.start, segment.end, segment.raw
                )
                fw.registry.add_segment(row)
            loaded = next(s for s in fw.registry.segments if s.raw == raw)
            return {
                "code": loaded.code,
                "start": loaded.start,
                "end": loaded.end,
                "numbers_left": fw.registry.numbers_left(),
            }
        if item.command == Command.SET_TIME:
            offset = fw.set_time(body)
            await self._commit(Batch(meta={"time_offset": offset}))
            fw.time_offset = offset
            return {"time": format_utc(fw.now())}
        raise DeviceError(Status.UNKNOWN_COMMAND, item.command.name)


def _answer(item: WriteRequest, code: int, out: dict[str, Any]) -> None:
    """Hand one answer to the link. The server's reply never raises; if one still did,
    losing that answer (the host asks again) is better than losing the writer."""
    try:
        item.reply(code, out)
    except Exception:
        log.exception("the answer to request 0x%x was lost", item.request_id)


def _bytes_field(body: Any, key: str) -> bytes:
    if not isinstance(body, dict) or set(body) != {key} or not isinstance(body[key], bytes):
        raise DeviceError(Status.BAD_REQUEST, f'takes {{"{key}": bytes}}')
    return bytes(body[key])
