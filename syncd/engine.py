"""Store-and-forward: every document from the device onto the chain, exactly once.

Per device, a loop of drain rounds. A round is a three-stage pipeline:

    FETCH pages from the device  ->  submit batches to the chain  ->  ACK_SYNC receipts

running concurrently, so the device reads the next pages while the chain
commits a batch and the device checks the previous receipt. Memory is
bounded by the page queue and one batch, whatever the backlog. Document
bytes are passed through untouched (never decoded): the counter of each is
known from FETCH's `first`, since FETCH returns consecutive documents.

Exactly once: the device keeps every document until a valid chain receipt
moves its `synced_through`; the chain returns the original receipt for a
document submitted again. So a round can always start over from the
device's `synced_through + 1` — after a crash, a lost response, a restart
of anything — and the worst case is a resubmission answered `duplicate`.

Only the highest admitted receipt of a batch goes to the device (it
acknowledges everything below it), and if several are waiting, only the
newest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from typing import Any

from device.client import DeviceClient, LinkError
from device.protocol import codec
from device.protocol.status import DeviceError, Status
from syncd.answers import check_result_count
from syncd.backoff import Backoff
from syncd.batcher import Batcher, Page
from syncd.chainhealth import ChainHealth, Consortium
from syncd.chainport import ChainDown, ChainGateway, ChainRefused, SubmitResult
from syncd.config import Config, default
from syncd.cursor import CursorStore
from syncd.link import DeviceLink, LinkDown
from syncd.metrics import SyncdMetrics
from syncd.rejections import Rejections
from syncd.rollback import RollbackGuard
from syncd.verdict import Next, judge
from syncd.waiting import until

log = logging.getLogger("taxctl.syncd")


MIN_PAGE_BYTES = 1024
# Sync yields to sales on a slow line: a sale's answer can wait behind the FETCH page
# already on the wire (a frame is never cut), so a page carries about as many document
# bytes as one sale's exchange puts on the wire (an ISSUE exchange is about 1,070 bytes:
# two typical documents), whatever the baud rate: a sale waiting behind one at most
# doubles its time.
LINE_PAGE_BYTES = 1100
# And receipts go to the device no oftener than they (or their answers, about 100 bytes)
# take this share of the line: one per page would be far more.
ACK_SHARE = 0.05
ACK_ANSWER_BYTES = 100
# FETCHes in flight on a physical line: enough that a busy host answering late does not
# leave the line idle; pages wait behind a sale's answer at the device, so more cost no sale.
FETCH_DEPTH = 4


@dataclass(frozen=True)
class SyncSettings:
    """The `sync.*` options (syncd/config.py declares them and their defaults)."""

    batch_max: int = default("sync.batch_max")
    fetch_max_bytes: int = default("sync.fetch_max_bytes")
    fetch_ahead: int = default("sync.fetch_ahead")
    poll_interval: float = default("sync.poll_interval")
    gather: float = default("sync.gather")
    backoff_initial: float = default("sync.backoff_initial")
    backoff_max: float = default("sync.backoff_max")
    reject_retries: int = default("sync.reject_retries")
    reject_retry_interval: float = default("sync.reject_retry_interval")

    @classmethod
    def of(cls, cfg: Config) -> SyncSettings:
        s = cls(**cfg.section("sync", (f.name for f in fields(cls))))
        # a first delay above the cap would be cut to it by every retry anyway
        return replace(s, backoff_initial=min(s.backoff_initial, s.backoff_max))


def line_page_bytes(baud: int, fetch_max_bytes: int = 60000) -> int:
    """Document bytes per FETCH page on a line that really runs at `baud`."""
    del baud  # the bound is one sale's exchange in bytes, the same at every rate
    return min(fetch_max_bytes, LINE_PAGE_BYTES)


class RoundEnd(StrEnum):
    CAUGHT_UP = "caught up"
    RETRY = "retry"
    PARK = "park"
    STOPPED = "stopped"


class DeviceSync:
    def __init__(
        self,
        link: DeviceLink,
        chain: ChainGateway,
        cursors: CursorStore,
        settings: SyncSettings,
        *,
        health: ChainHealth,
        consortium: Consortium,
        metrics: SyncdMetrics | None = None,
        before_round: Callable[[DeviceLink], Any] | None = None,
        on_rejected: Callable[[str, Sequence[str]], bool] | None = None,
        clock: Callable[[], float] = time.time,
        guard: RollbackGuard | None = None,
    ) -> None:
        self.link = link
        self.chain = chain
        self.cursors = cursors
        self.settings = settings
        self.health = health
        self.consortium = consortium
        self.metrics = metrics
        self.before_round = before_round
        self.on_rejected = on_rejected
        self.clock = clock
        self.guard = guard
        self.rejections = Rejections(
            cursors, settings, lambda: self.clock(), metrics=metrics, guard=guard
        )
        self.backoff = Backoff(settings.backoff_initial, settings.backoff_max)
        self._wake = asyncio.Event()
        self.rounds = 0
        self.submitted = 0
        self.acked_through = 0
        self.parked_until: float | None = None
        self.last_ack_error: str | None = None
        self._device_id: str | None = None
        self.page_bytes = self._page_cap()  # FETCH page size, adapted to the line
        self.failures = 0  # rounds ended by an unexpected error (a bug), survived
        self._last_failure: tuple[str, str] | None = None

    def wake(self) -> None:
        """New documents were issued: look now rather than at the next poll."""
        self._wake.set()

    def _page_cap(self) -> int:
        fetch_max = self.settings.fetch_max_bytes
        if self.link.line_rate is None:
            return fetch_max
        return line_page_bytes(self.link.config.baud, fetch_max)

    def _ack_spacing(self, receipt: dict[str, Any] | None = None) -> float:
        """Seconds between ACK_SYNCs on a physical line: the larger of the receipt (host to
        device) and the answer (device to host) takes ACK_SHARE of the line."""
        rate = self.link.line_rate
        if not rate:
            return 0.0
        size = max(ACK_ANSWER_BYTES, len(codec.encode(receipt)) if receipt else 0)
        return size / (rate * ACK_SHARE)

    def update_settings(self, settings: SyncSettings) -> None:
        self.settings = self.rejections.settings = settings
        self.page_bytes = min(self.page_bytes, self._page_cap())
        self.backoff = Backoff(settings.backoff_initial, settings.backoff_max)
        self._wake.set()

    # --- the loop -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if not self.link.online:
                await until(self.link.came_online, stop)
                continue
            self._wake.clear()  # a sale from now on is one this round may miss: it wakes the next
            try:
                end = await self.drain(stop)
            except (LinkError, LinkDown):
                end = RoundEnd.RETRY  # the client told the link, which checks itself
            except DeviceError as exc:
                log.error("%s: device refused during sync: %s", self.link.label, exc.text)
                end = RoundEnd.PARK
            except SubmissionRefused as exc:
                log.error("%s: %s", self.link.label, exc)
                end = RoundEnd.PARK
            except ChainDown as exc:
                self.health.failure(exc.code, str(exc))
                end = RoundEnd.RETRY
            except Exception as exc:  # a bug: this device's sync must outlive it
                self._failed(exc)
                end = RoundEnd.RETRY
            else:
                self._last_failure = None
            # A round that caught up moved only synced_through (the printer's STATUS has it
            # too): the daemon's periodic save writes it, instead of two fsyncs in the event
            # loop after every sale's round. Anything else is written now.
            self._save_cursor(write=end != RoundEnd.CAUGHT_UP or stop.is_set())
            if end == RoundEnd.STOPPED or stop.is_set():
                return
            await self._pause(end, stop)

    def _failed(self, exc: Exception) -> None:
        """Count an unexpected error; its traceback is logged once, not at every retry
        while the same error repeats."""
        self.failures += 1
        if self.metrics:
            self.metrics.task_failures.inc(1, "sync", self.link.config.port)
        frame = exc.__traceback__
        while frame is not None and frame.tb_next is not None:
            frame = frame.tb_next
        where = f"{frame.tb_frame.f_code.co_filename}:{frame.tb_lineno}" if frame else "?"
        signature = (type(exc).__name__, where)
        if signature == self._last_failure:
            log.debug("%s: sync failed again (%s); retrying", self.link.label, type(exc).__name__)
            return
        self._last_failure = signature
        log.error(
            "%s: sync round failed unexpectedly; retrying after a backoff",
            self.link.label,
            exc_info=exc,
        )

    async def _pause(self, end: RoundEnd, stop: asyncio.Event) -> None:
        s = self.settings
        due = self.rejections.next_due(self.link.device_id)
        if end == RoundEnd.CAUGHT_UP:
            delay = s.poll_interval
            if due is not None:
                delay = min(delay, max(0.0, due - self.clock()))
        elif end == RoundEnd.RETRY:
            delay = self.backoff.next_delay()
        else:
            delay = max(s.backoff_max, s.reject_retry_interval)
            if due is not None:
                delay = min(delay, max(s.backoff_max, due - self.clock()))
            self.parked_until = self.clock() + delay
        if end != RoundEnd.CAUGHT_UP:
            self._wake.clear()  # sales during a failed round do not cut its backoff short
        woken = await until(stop, self._wake, timeout=delay)
        self.parked_until = None
        if woken and end == RoundEnd.CAUGHT_UP and s.gather > 0:
            # A sale woke a round that had caught up: the sales of the next moment go with
            # it (one FETCH, one submission, one receipt for several), as a group commit
            # does for fsyncs. Alone, each sale paid a whole round on the line, in syncd
            # and on the chain, and the sales behind it waited for that CPU.
            await until(stop, timeout=s.gather)

    # --- one round ---------------------------------------------------------------------------

    async def drain(self, stop: asyncio.Event) -> RoundEnd:
        """Fetch, submit and acknowledge until the device has nothing unsynced (or a stop)."""
        client = self.link.require()
        self.rounds += 1
        if self.before_round is not None:
            await self.before_round(self.link)
        if self.link.device_id != self._device_id:
            self._device_id = self.link.device_id
            self.acked_through = 0
        # The same bound in bytes whatever the page size: small pages on a slow line must
        # not stop the line while the chain commits a batch.
        ahead = self.settings.fetch_ahead * max(
            1, self.settings.fetch_max_bytes // self._page_cap()
        )
        pages: asyncio.Queue[Page | None] = asyncio.Queue(ahead)
        acks: asyncio.Queue[tuple[int, dict[str, Any]] | None] = asyncio.Queue()
        fetch = self._fetch if self.link.line_rate is None else self._fetch_paced
        fetcher = asyncio.create_task(fetch(client, pages, stop))
        acker = asyncio.create_task(self._ack(client, acks))
        batcher = Batcher(pages, fetcher, self.settings.batch_max)
        end = RoundEnd.CAUGHT_UP
        try:
            end = await self._submit_loop(batcher, acks, stop)
        finally:
            fetcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, LinkError, DeviceError, LinkDown):
                await fetcher
            await acks.put(None)
            acked = await acker  # raises the ACK's own failure, after the last batch
            if acked is False and end == RoundEnd.CAUGHT_UP:
                end = RoundEnd.PARK
        return end

    async def _fetch(
        self, client: DeviceClient, pages: asyncio.Queue[Page | None], stop: asyncio.Event
    ) -> None:
        nxt = 1  # the device starts at synced_through + 1 anyway
        try:
            while not stop.is_set():
                try:
                    body = await client.fetch(nxt, max_bytes=self.page_bytes)
                except LinkError:
                    # On a noisy line a long frame rarely arrives whole (each byte is a
                    # chance to be hit): ask for shorter pages, and grow back on success.
                    self.page_bytes = max(MIN_PAGE_BYTES, self.page_bytes // 4)
                    raise
                self.page_bytes = min(self._page_cap(), self.page_bytes + self.page_bytes // 4)
                self.link.note_counters(int(body["last_counter"]), int(body["synced_through"]))
                docs = body["documents"]
                if not docs:
                    break
                first = int(body["first"])
                await pages.put(Page(first, docs))
                nxt = first + len(docs)
        finally:
            with contextlib.suppress(asyncio.QueueFull):
                pages.put_nowait(None)

    async def _fetch_paced(
        self, client: DeviceClient, pages: asyncio.Queue[Page | None], stop: asyncio.Event
    ) -> None:
        """On a physical line, FETCH_DEPTH FETCHes in flight: the line carries the next page
        while this one is read, instead of idling a round trip per page. The first page is
        cut by bytes; its count then cuts the next ones, so where each starts is known before
        the answer before it. An answer that does not start where the last one ended (the
        journal's end moved meanwhile) is dropped with those behind it, and fetching goes on
        from there."""
        nxt, count = 1, 0
        flight: deque[tuple[int, asyncio.Task[dict[str, Any]]]] = deque()
        try:
            while not stop.is_set():
                if not count:
                    body = await self._fetch_one(client, nxt, None)
                else:
                    while len(flight) < FETCH_DEPTH:
                        start = flight[-1][0] + count if flight else nxt
                        job = self._fetch_one(client, start, count)
                        flight.append((start, asyncio.create_task(job)))
                    body = await flight.popleft()[1]
                docs = body["documents"]
                if not count:
                    nxt = int(body["first"])  # the device starts at synced_through + 1 anyway
                elif docs and int(body["first"]) != nxt:
                    count = _cancel_all(flight)  # start over, cut by bytes again
                    continue
                if not docs:
                    break
                await pages.put(Page(nxt, docs))
                nxt += len(docs)
                count = count or len(docs)
                if len(docs) < count:  # the journal's end: what is in flight starts past it
                    count = _cancel_all(flight)
        finally:
            _cancel_all(flight)
            with contextlib.suppress(asyncio.QueueFull):
                pages.put_nowait(None)

    async def _fetch_one(
        self, client: DeviceClient, start: int, count: int | None
    ) -> dict[str, Any]:
        try:
            if count is None:
                body = await client.fetch(start, max_bytes=self.page_bytes)
            else:
                body = await client.fetch(start, max_count=count)
        except LinkError:
            self.page_bytes = max(MIN_PAGE_BYTES, self.page_bytes // 4)
            raise
        self.link.note_counters(int(body["last_counter"]), int(body["synced_through"]))
        return body

    async def _submit_loop(
        self,
        batcher: Batcher,
        acks: asyncio.Queue[tuple[int, dict[str, Any]] | None],
        stop: asyncio.Event,
    ) -> RoundEnd:
        device_id = self.link.device_id or "?"
        while True:
            if stop.is_set():
                return RoundEnd.STOPPED
            batch = await batcher.next()
            if batch is None:
                return RoundEnd.CAUGHT_UP
            first, docs = batch
            mask = self.rejections.skipped(device_id, first, len(docs))
            counters = [first + i for i in range(len(docs)) if not mask[i]]
            if not counters:
                continue
            if len(counters) != len(docs):
                docs = [d for d, skip in zip(docs, mask, strict=True) if not skip]
            results = await self._submit(docs, stop)
            if results is None:
                return RoundEnd.STOPPED
            verdict = judge(counters, results)
            self._account(device_id, len(docs))
            if verdict.ack_receipt is not None and verdict.ack_counter is not None:
                await acks.put((verdict.ack_counter, verdict.ack_receipt))
            if verdict.rejected:
                codes = [r.code for r in verdict.rejected]
                if self.on_rejected is not None and self.on_rejected(device_id, codes):
                    log.warning(
                        "%s: chain does not know the device or its numbers (%s); registering again",
                        device_id,
                        ", ".join(sorted(set(codes))),
                    )
                    return RoundEnd.RETRY
                self.rejections.record(device_id, verdict.rejected)
                self._save_cursor()
            if verdict.next == Next.RETRY:
                log.info(
                    "%s: %d documents not final on the chain yet (from %d); retrying",
                    device_id,
                    len(verdict.unresolved),
                    verdict.unresolved[0],
                )
                return RoundEnd.RETRY
            if verdict.next == Next.PARK:
                log.warning(
                    "%s: %d documents held behind rejected document %d; waiting",
                    device_id,
                    len(verdict.unresolved),
                    verdict.rejected[0].counter,
                )
                return RoundEnd.PARK
            self.backoff.reset()

    async def _submit(self, docs: list[bytes], stop: asyncio.Event) -> list[SubmitResult] | None:
        """Submit until the chain answers; None if asked to stop while it is away."""
        while True:
            started = time.monotonic()
            try:
                results = await self.chain.submit(docs)
                check_result_count(results, len(docs))  # a port that does not check its answers
            except ChainDown as exc:
                self.health.failure(exc.code, f"{exc} ({self.chain.url})")
                if await until(stop, timeout=self.backoff.next_delay()):
                    return None
                continue
            except ChainRefused as exc:
                # The whole submission refused (not one document): malformed batch or
                # an unknown device. Nothing to retry quickly.
                self.health.failure(exc.code, str(exc))
                raise SubmissionRefused(exc.code, exc.message) from exc
            self.health.success()
            if self.metrics:
                self.metrics.submit_latency.observe(time.monotonic() - started)
            return results

    def _account(self, device_id: str, sent: int) -> None:
        self.submitted += sent
        if self.metrics:
            self.metrics.submitted_total.inc(sent, device_id)

    async def _ack(
        self, client: DeviceClient, acks: asyncio.Queue[tuple[int, dict[str, Any]] | None]
    ) -> bool:
        """Hand receipts to the device; only the newest when several wait. False if the device
        refused them (reported; the round should not go on as if synced)."""
        ok = True
        spacing = self._ack_spacing()
        while True:
            item = await acks.get()
            if item is None:
                return ok
            if spacing:
                await asyncio.sleep(spacing)  # on a slow line: fewer, newer receipts
                spacing = self._ack_spacing(item[1])
            last = False
            while not acks.empty():
                newer = acks.get_nowait()
                if newer is None:
                    last = True
                    break
                item = newer
            counter, receipt = item
            if counter > self.acked_through and not await self._ack_one(client, counter, receipt):
                ok = False
            if last:
                return ok

    async def _ack_one(self, client: DeviceClient, counter: int, receipt: dict[str, Any]) -> bool:
        device_id = self.link.device_id or "?"
        held = self.link.info.consortium if self.link.info is not None else None
        try:
            chain_list = await self.consortium.get()
        except (ChainDown, ChainRefused) as exc:
            self.health.failure(exc.code, str(exc))
            chain_list = None
        offer = chain_list if chain_list is not None and chain_list != held else None
        for attempt in range(2):
            try:
                extra = (
                    {"endorsements": self.consortium.endorsements}
                    if offer is not None and self.consortium.endorsements
                    else {}
                )
                result = await client.ack_sync([receipt], consortium=offer, **extra)
            except DeviceError as exc:
                if attempt == 0 and exc.status in (
                    Status.RECEIPT_INVALID,
                    Status.CONSORTIUM_INVALID,
                ):
                    # Perhaps the chain moved to a new node list: fetch it and offer it.
                    with contextlib.suppress(ChainDown, ChainRefused):
                        offer = await self.consortium.get(refresh=True)
                        continue
                self.last_ack_error = exc.text
                log.error("%s: device refused the receipt for %d: %s", device_id, counter, exc.text)
                if self.metrics:
                    self.metrics.chain_errors.inc(1, f"ACK_{exc.status.name}")
                return False
            if offer is not None:
                self.link.adopt_consortium(offer)
            synced = int(result["synced_through"])
            self.acked_through = max(self.acked_through, synced)
            self.last_ack_error = None
            self.link.note_counters(0, synced)  # and the link counts the documents synced
            self.cursors.device(device_id).synced_through = synced
            self.rejections.forget_synced(device_id, synced)
            self.cursors.mark_dirty()
            log.debug("%s: synced through %d", device_id, synced)
            return True
        return False

    def _save_cursor(self, *, write: bool = True) -> None:
        if self.guard is not None:
            self.guard.check_link(self.link)
        if self.link.device_id is not None:
            cursor = self.cursors.device(self.link.device_id)
            cursor.port = self.link.config.port
            status = self.link.status
            if status is not None:
                cursor.counter = status.counter
            cursor.synced_through = max(cursor.synced_through, self.link.synced_through)
        if write and self.cursors.dirty:
            try:
                self.cursors.save()
            except OSError as exc:
                log.error("cannot save the sync cursor: %s", exc)

    def describe(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "submitted": self.submitted,
            "parked_until": self.parked_until,
            "ack_error": self.last_ack_error,
            "rejected": self.rejections.describe(self.link.device_id),
        }


def _cancel_all(flight: deque[tuple[int, asyncio.Task[dict[str, Any]]]]) -> int:
    """Cancel the FETCHes in flight (reads: nothing on the device changes); 0, the count
    that makes the next page be cut by bytes."""
    while flight:
        flight.popleft()[1].cancel()
    return 0


class SubmissionRefused(Exception):
    """The chain refused a whole submission (not single documents)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"chain refused the submission: {code} {message}")
        self.code = code
