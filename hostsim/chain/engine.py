"""The chain's state machine: admit transactions, order them into blocks, finalize.

Submissions are validated against the *tip*: committed state (the ledger)
plus everything accepted into the mempool, so a batch of a device's
documents is checked in one pass without waiting for blocks. Validation
runs without awaiting between steps (signatures are checked first, in a
thread pool), so two submissions never interleave. A background task cuts
blocks by size or after a short interval, has the reachable nodes sign
them, and writes each in one SQLite transaction; only then do submitters
see `committed` with a receipt. Without a quorum nothing is cut and the
mempool waits; a crash loses only non-final transactions, which their
submitters resubmit (documents are idempotent by hash).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import sqlite3
from collections import OrderedDict, deque
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from device.protocol.chainapi import SubmitStatus
from device.protocol.clock import Clock
from device.protocol.document import Document, format_utc
from device.protocol.invoice import DEFAULT_TAX_RATES
from hostsim.bureau import Bureau
from hostsim.chain import rules
from hostsim.chain.apply import write_block
from hostsim.chain.blocks import Block, BlockCache, assemble
from hostsim.chain.errors import ChainError, Code
from hostsim.chain.ledger import Ledger
from hostsim.chain.precheck import Checked, check_chunk, warm_up, with_keys, worker_init
from hostsim.chain.quorum import NodeSet
from hostsim.chain.state import HELD_LIMITS, HeldLimits, TipState
from hostsim.chain.tx import Tx, document_tx

log = logging.getLogger("taxctl.chain")

PRECHECK_CHUNK = 64
# Validating in the event loop, it yields after this many bytes of documents (hostile
# ones decode at about 2 MB/s: a slice costs the others at most a few tens of ms).
PRECHECK_SLICE_BYTES = 64 * 1024
REJECTION_MEMORY = 10_000


@dataclass(slots=True)
class DocumentOutcome:
    """What became of one submitted document (the API's Result, docs/chain-openapi.yaml)."""

    status: SubmitStatus
    hash: bytes | None = None
    device_id: str | None = None
    counter: int | None = None
    height: int | None = None
    position: int | None = None
    code: Code | None = None
    message: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    tx: Tx | None = None


def _rejected(exc: ChainError, doc: Document | None = None) -> DocumentOutcome:
    return DocumentOutcome(
        SubmitStatus.REJECTED,
        doc.hash if doc else None,
        doc.device_id if doc else None,
        doc.counter if doc else None,
        code=exc.code,
        message=exc.message,
        extra=dict(exc.extra),
    )


class Engine:
    def __init__(
        self,
        ledger: Ledger,
        nodes: NodeSet,
        bureau: Bureau,
        clock: Clock,
        *,
        chain_id: str,
        training: bool,
        rates: frozenset[int] = DEFAULT_TAX_RATES,
        block_max: int = 2000,
        block_interval: float = 0.02,
        mempool_max: int = 200_000,
        workers: int = 0,
        held_limits: HeldLimits = HELD_LIMITS,
    ) -> None:
        self.ledger = ledger
        self.nodes = nodes
        self.bureau = bureau
        self.clock = clock
        self.chain_id = chain_id
        self.training = training
        self.rates = rates
        self.block_max = block_max
        self.block_interval = block_interval
        self.mempool_max = mempool_max
        self.state = TipState(ledger, bureau.open_certificate, bureau.open_segment, held_limits)
        self.blocks = BlockCache(ledger, nodes)
        self.mempool: deque[Tx] = deque()
        self.rejections: OrderedDict[bytes, ChainError] = OrderedDict()
        self.height = ledger.height()
        last = ledger.block(self.height)
        self.tip_hash = last.hash if last else bytes(32)
        self.last_time = ""
        self.write_error: str | None = None
        self.workers = workers
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="block-writer")
        self.pool: ProcessPoolExecutor | None = None
        self._work = asyncio.Event()
        self._incoming = 0  # submissions still being decoded and verified
        self._queued = 0  # transactions ever queued: the next one's `seq`
        self._task: asyncio.Task[None] | None = None
        # Held while a block is signed and written, so a rotation sees no block in between.
        self.cut_lock = asyncio.Lock()

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self.workers > 0:
            # spawn: workers inherit neither the event loop, the ledger nor the sockets, and
            # they are the chain's own children, so they can be tied to its life
            context = multiprocessing.get_context("spawn")
            self.pool = ProcessPoolExecutor(
                self.workers, mp_context=context, initializer=worker_init
            )
            for _ in range(self.workers):
                self.pool.submit(warm_up)
        self._task = asyncio.get_running_loop().create_task(self._cutter())
        self.state.load_held()
        self.state.expire_held(self.clock.now())
        for device_id in list(self.state.held):
            if device_id in self.state.devices:
                self._release_held(device_id)
        self._work.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        self.writer.shutdown(wait=True)

    # --- documents -------------------------------------------------------------------------

    async def submit(self, raws: Sequence[bytes], wait: float) -> list[DocumentOutcome]:
        results = await self.admit(raws)
        waiting = [r.tx for r in results if r.tx and r.status == SubmitStatus.PENDING]
        if waiting and wait > 0:
            # Blocks are cut from the head of the mempool in order, so the transaction
            # queued last is final last: waiting for it is waiting for all of them
            # (without a future and a callback for each of up to a thousand).
            last = max(waiting, key=lambda tx: tx.seq)
            await asyncio.wait([last.finality()], timeout=wait)
        for r in results:
            if r.status == SubmitStatus.PENDING and r.tx and r.tx.final is not None:
                r.height, r.position = r.tx.final
                r.status = SubmitStatus.COMMITTED
        return results

    async def admit(self, raws: Sequence[bytes]) -> list[DocumentOutcome]:
        """Validate a batch against the tip and queue what passes, without waiting for
        finality: one result per document, in order."""
        results: list[DocumentOutcome | None] = [None] * len(raws)
        self._incoming += 1
        try:
            checked = await self._precheck(raws)
        finally:
            self._incoming -= 1
        docs: dict[int, Document] = {}
        for i, c in enumerate(checked):
            if c.doc is None:
                results[i] = _rejected(ChainError(Code.MALFORMED_DOCUMENT, str(c.malformed)))
            else:
                docs[i] = c.doc
        committed = self.ledger.txs_hashes(
            [d.hash for d in docs.values() if self._may_be_committed(d)]
        )
        for i, doc in docs.items():
            where = committed.get(doc.hash)
            if where is not None:
                results[i] = self._done(SubmitStatus.DUPLICATE, doc, *where)
        # From here to the end of admission nothing awaits: the tip cannot move under us.
        self.state.prefetch_numbers(
            [
                (d.code, d.number)
                for i, d in docs.items()
                if results[i] is None and d.code and d.number
            ]
        )
        admitted_before = len(self.mempool)
        now = self.clock.now()
        self.state.expire_held(now)
        for i, doc in docs.items():
            if results[i] is None:
                results[i] = self._admit(doc, checked[i], now)
        self.state.flush_held()
        self.state.prefetch_numbers([])
        if len(self.mempool) > admitted_before:
            self._work.set()
        return [r for r in results if r is not None]

    async def _precheck(self, raws: Sequence[bytes]) -> list[Checked]:
        """Decode, signatures and line totals: in worker processes for large batches."""
        items = with_keys(raws, self._key_of)
        if len(items) <= PRECHECK_CHUNK and sum(len(raw) for raw in raws) <= PRECHECK_SLICE_BYTES:
            return check_chunk(items, self.rates)
        if self.pool is None:
            return await self._precheck_here(items)
        loop = asyncio.get_running_loop()
        size = max(PRECHECK_CHUNK, -(-len(items) // (2 * self.workers)))
        chunks = [items[s : s + size] for s in range(0, len(items), size)]
        try:
            parts = await asyncio.gather(
                *(loop.run_in_executor(self.pool, check_chunk, c, self.rates) for c in chunks)
            )
        except BrokenProcessPool:
            log.error("a validation worker died; validating in the event loop from now on")
            self.pool = None
            return check_chunk(items, self.rates)
        return [c for part in parts for c in part]

    async def _precheck_here(self, items: list[tuple[bytes, bytes | None]]) -> list[Checked]:
        """In the event loop, a slice at a time, letting every other request in between: a
        batch of documents costly to decode (up to 32 MiB of them) takes its own time
        without freezing the chain for everybody else."""
        out: list[Checked] = []
        start = 0
        while start < len(items):
            end, size = start, 0
            while (
                end < len(items)
                and end - start < PRECHECK_CHUNK
                and (end == start or size + len(items[end][0]) <= PRECHECK_SLICE_BYTES)
            ):
                size += len(items[end][0])
                end += 1
            out.extend(check_chunk(items[start:end], self.rates))
            start = end
            if start < len(items):
                await asyncio.sleep(0)
        return out

    def _may_be_committed(self, doc: Document) -> bool:
        """Whether the ledger may hold `doc`: a committed document was accepted first, so
        its counter is at or below its device's tip (which only grows, and devices are
        never forgotten). A sender's next documents are above it and cost no query; the
        ledger's read cache is cold after every block, which made it about 100 us a batch."""
        device = self.state.devices.get(doc.device_id)
        return device is not None and doc.counter <= device.last_counter

    def _key_of(self, device_id: str) -> bytes | None:
        device = self.state.devices.get(device_id)
        return None if device is None else device.public_key

    def _admit(self, doc: Document, checked: Checked, now: float) -> DocumentOutcome:
        pending = self.state.pending.get(doc.hash)
        if pending is not None:
            return DocumentOutcome(
                SubmitStatus.PENDING, doc.hash, doc.device_id, doc.counter, tx=pending
            )
        if doc.hash in self.state.held_hashes:
            return DocumentOutcome(SubmitStatus.HELD, doc.hash, doc.device_id, doc.counter)
        try:
            device = rules.registered(doc, self.state.devices.get(doc.device_id))
            signature_ok = checked.signature_ok
            if signature_ok is None:
                signature_ok = doc.verify(device.public_key)
            if not signature_ok:
                raise ChainError(
                    Code.BAD_SIGNATURE,
                    f"the signature does not verify with {doc.device_id}'s registered key",
                )
            rules.admission(doc, device, self.training)
            if doc.counter <= device.last_counter:
                existing = self.state.hash_at(doc.device_id, doc.counter)
                if existing is not None and existing == doc.hash:
                    return self._status_of_known(doc)
                self.state.record_equivocation(doc, existing, "counter", self.clock.now())
                raise ChainError(
                    Code.EQUIVOCATION,
                    f"{doc.device_id} already has a different document {doc.counter};"
                    " both are kept as evidence",
                )
            if doc.counter > device.last_counter + 1:
                other = self.state.held_at(doc.device_id, doc.counter)
                if other is not None and other.hash != doc.hash:
                    self.state.record_equivocation(doc, other.hash, "counter", self.clock.now())
                    raise ChainError(
                        Code.EQUIVOCATION,
                        f"a different document {doc.counter} of {doc.device_id} is already held",
                    )
                refusal = self.state.hold_refusal(doc.device_id, device.last_counter + 1)
                if refusal is not None:  # not remembered: it is accepted once the gap fills
                    return _rejected(refusal, doc)
                self.state.hold(doc, now)
                return DocumentOutcome(SubmitStatus.HELD, doc.hash, doc.device_id, doc.counter)
            tx = self._accept_next(doc, device, checked.totals_error)
        except ChainError as exc:
            self._remember_rejection(doc.hash, exc)
            return _rejected(exc, doc)
        self._release_held(doc.device_id)
        return DocumentOutcome(SubmitStatus.PENDING, doc.hash, doc.device_id, doc.counter, tx=tx)

    def _accept_next(
        self, doc: Document, device: rules.DeviceRecord, totals_error: ChainError | bool | None
    ) -> Tx:
        """`totals_error` is the precheck's verdict on the line totals, or True to check now."""
        try:
            rules.check_next(
                doc,
                device,
                self.rates,
                self.state.number_holder,
                self.state.original,
                totals=totals_error,
                confirmation=self.state.confirmation,
            )
        except ChainError as exc:
            if exc.code == Code.NUMBER_USED:
                holder = bytes.fromhex(str(exc.extra["existing_hash"]))
                self.state.record_equivocation(doc, holder, "number", self.clock.now())
            raise
        tx = document_tx(doc)
        self.state.accept_document(tx, device)
        self._queue(tx)
        return tx

    def _release_held(self, device_id: str) -> None:
        """Documents held behind a gap the last acceptance filled, in counter order."""
        device = self.state.devices[device_id]
        while (doc := self.state.unhold(device_id, device.last_counter + 1)) is not None:
            try:
                rules.admission(doc, device, self.training)
                self._accept_next(doc, device, True)
            except ChainError as exc:
                log.warning("held document %s/%d rejected: %s", device_id, doc.counter, exc)
                self._remember_rejection(doc.hash, exc)
                self.state.discard_held(doc.hash)
                return

    def _status_of_known(self, doc: Document) -> DocumentOutcome:
        tx = self.state.pending.get(doc.hash)
        if tx is not None:
            return DocumentOutcome(
                SubmitStatus.PENDING, doc.hash, doc.device_id, doc.counter, tx=tx
            )
        where = self.ledger.txs_hashes([doc.hash]).get(doc.hash)
        assert where is not None, "a counter at or below the tip is pending or committed"
        return self._done(SubmitStatus.DUPLICATE, doc, *where)

    def _done(
        self, status: SubmitStatus, doc: Document, height: int, position: int
    ) -> DocumentOutcome:
        return DocumentOutcome(status, doc.hash, doc.device_id, doc.counter, height, position)

    def _remember_rejection(self, tx_hash: bytes, exc: ChainError) -> None:
        self.rejections[tx_hash] = exc
        while len(self.rejections) > REJECTION_MEMORY:
            self.rejections.popitem(last=False)

    # --- bureau acts and claims ------------------------------------------------------------

    def enqueue(self, tx: Tx) -> asyncio.Future[tuple[int, int]]:
        if len(self.mempool) >= self.mempool_max:
            raise ChainError(
                Code.UNAVAILABLE, "the chain is not finalizing and its mempool is full"
            )
        self.state.pending[tx.hash] = tx
        self._queue(tx)
        self._work.set()
        return tx.finality()

    async def wait_final(
        self, future: asyncio.Future[tuple[int, int]], wait: float
    ) -> tuple[int, int]:
        try:
            return await asyncio.wait_for(asyncio.shield(future), wait)
        except TimeoutError:
            raise ChainError(
                Code.UNAVAILABLE,
                "accepted but not final yet (no quorum of nodes reachable); ask again later",
            ) from None

    def _queue(self, tx: Tx) -> None:
        self._queued += 1
        tx.seq = self._queued
        self.mempool.append(tx)

    def mempool_full(self) -> bool:
        return len(self.mempool) >= self.mempool_max

    def health(self) -> dict[str, Any]:
        """Fields this engine adds to /v1/health (a consortium node: its ordering service)."""
        return {}

    # --- blocks ----------------------------------------------------------------------------

    async def _cutter(self) -> None:
        while True:
            await self._work.wait()
            # Wait for a fuller block only while other submissions are on their way in;
            # a lone submitter should not pay the interval on every batch.
            if len(self.mempool) < self.block_max and self._incoming:
                await asyncio.sleep(self.block_interval)
            while self.mempool:
                if not self.nodes.has_quorum():
                    await asyncio.sleep(0.05)
                    continue
                if await self.cut_block() is None:
                    await asyncio.sleep(0.5)
            self._work.clear()

    async def cut_block(self) -> Block | None:
        """Finalize the next block from the mempool; None if it could not be written.

        The block's transactions stay at the head of the mempool (and in the
        pending overlay) until the write is durable; admission goes on meanwhile.
        """
        async with self.cut_lock:
            return await self._cut_block()

    async def _cut_block(self) -> Block | None:
        count = min(self.block_max, len(self.mempool))
        txs = [self.mempool[i] for i in range(count)]
        now = max(format_utc(self.clock.now()), self.last_time)
        block = assemble(self.chain_id, self.height + 1, self.tip_hash, [t.hash for t in txs], now)
        block.signatures = self.nodes.sign(block.header)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self.writer, self._write, block, txs)
        except sqlite3.Error as exc:
            self.write_error = f"cannot write block {block.height}: {exc}"
            log.error("%s; the %d transactions stay in the mempool", self.write_error, count)
            return None
        self.write_error = None
        for _ in range(count):
            self.mempool.popleft()
        self.height, self.tip_hash, self.last_time = block.height, block.hash, now
        self.blocks.put(block)
        for position, tx in enumerate(txs):
            self.state.committed(tx, block.height)
            tx.final = (block.height, position)
            if tx.future is not None and not tx.future.done():
                tx.future.set_result(tx.final)
        return block

    def _write(self, block: Block, txs: list[Tx]) -> None:
        with self.ledger.block_transaction() as db:
            write_block(db, block, txs)

    def block(self, height: int) -> Block:
        block = self.blocks.get(height)
        if block is None:
            raise ChainError(Code.NOT_FOUND, f"no block {height}")
        return block

    def receipt(
        self, height: int, position: int, device_id: str | None, counter: int | None
    ) -> dict[str, Any]:
        return self.block(height).receipt(position, device_id, counter)
