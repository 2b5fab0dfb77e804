"""A consortium node's engine: the embedded chain's rules, ordered through etcd.

The in-process `Engine` admits a submission against its tip at once; here a
submission is prechecked (decoding, signature, duplicates), appended to the
etcd log, and only admitted when the proposal naming its revision is applied
— on every node, in revision order, with the block time as the clock — so
every node takes the same held, rejected and equivocation decisions and
builds the same block (`orderer.py`). The submitter's answer waits for that
block to be final (2f+1 node signatures), exactly as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any

from device.protocol import codec, trust
from device.protocol.chainapi import SubmitStatus
from device.protocol.clock import Clock
from device.protocol.keys import KeyPair
from hostsim.bureau import Bureau
from hostsim.chain.apply import write_block
from hostsim.chain.blocks import Block, BlockCache
from hostsim.chain.engine import DocumentOutcome, Engine, _rejected
from hostsim.chain.errors import ChainError, Code
from hostsim.chain.ledger import Ledger
from hostsim.chain.quorum import NodeSet
from hostsim.chain.tx import Tx
from hostsim.consortium import log as records
from hostsim.consortium.etcd import Etcd, EtcdError

logger = logging.getLogger("taxctl.consortium")

SEQ_META, REV_META, SIGNED_META = "consortium_seq", "consortium_rev", "consortium_signed"
REACHABLE_SECONDS = 10.0


class PinnedClock:
    """The node's clock, except while a proposal is applied: then the block's time, so
    held expiry and evidence timestamps are the same on every node."""

    def __init__(self, base: Clock) -> None:
        self.base = base
        self.pinned: float | None = None

    def now(self) -> float:
        return self.base.now() if self.pinned is None else self.pinned


class ConsortiumNodes(NodeSet):
    """The consortium as one node sees it: every member's public key, its own private key,
    and which members it saw alive lately (their lease-held `alive/` key)."""

    def __init__(self, node_id: str, key: KeyPair, consortium: trust.ConsortiumKeys) -> None:
        super().__init__({node_id: key})
        self.node_id = node_id
        self.key = key
        self.members = dict(consortium.nodes)
        self.seen: dict[str, float] = {}

    @property
    def public_keys(self) -> dict[str, bytes]:
        return dict(self.members)

    @property
    def quorum(self) -> int:
        return trust.quorum(len(self.members))

    def available(self) -> list[str]:
        now = time.monotonic()
        return [
            n
            for n in self.members
            if n == self.node_id or now - self.seen.get(n, -1e9) < REACHABLE_SECONDS
        ]

    def sign(self, header: Any) -> list[dict[str, Any]]:
        return [{"node_id": self.node_id, "signature": trust.sign_header(self.key, header)}]

    @property
    def certified(self) -> bool:
        """Whether the epoch in force certifies this node's key (a replaced one signs
        nothing)."""
        return self.members.get(self.node_id) == self.key.public_key


class EpochBlockCache(BlockCache):
    """A block of an earlier epoch is handed out with the signatures of its own epoch's
    nodes whose keys the current epoch still certifies, and this node's own: a node holds
    only its own key, so it cannot re-sign for the others, and a replaced key's
    signature is left out (it no longer counts)."""

    nodes: ConsortiumNodes

    def reattest(self, header: dict[str, Any], stored: bytes) -> list[dict[str, Any]]:
        message = trust.BLOCK_DOMAIN + trust.header_bytes(header)
        entries = codec.decode(stored)
        kept = [
            e
            for e in (entries if isinstance(entries, list) else [])
            if isinstance(e, dict)
            and e.get("node_id") != self.nodes.node_id
            and trust.signers([e], self.nodes.members, message)
        ]
        return self.nodes.sign(header) + kept if self.nodes.certified else kept


class ConsortiumEngine(Engine):
    def __init__(
        self,
        ledger: Ledger,
        nodes: ConsortiumNodes,
        bureau: Bureau,
        clock: PinnedClock,
        etcd: Etcd,
        *,
        chain_id: str,
        training: bool,
        consortium: bytes,
        retain_seconds: float = 3600.0,
    ) -> None:
        super().__init__(
            ledger, nodes, bureau, clock, chain_id=chain_id, training=training, workers=0
        )
        self.pinned = clock
        self.members = nodes
        self.blocks = EpochBlockCache(ledger, nodes)
        self.pending_epoch: bytes | None = None  # an epoch request applied, not yet in force
        self.epoch_listeners: list[Callable[[bytes, list[Any]], None]] = []
        self.members_raw = consortium
        self.retain_seconds = retain_seconds
        self.url = ""  # this node's API URL, published for peers once it listens
        self.state_listeners: list[Callable[[], None]] = []
        self.etcd = etcd
        self.keys = records.Keys(chain_id)
        self.node_id = nodes.node_id
        self.applying = False
        self.seq = int(ledger.get_meta(SEQ_META) or b"0")
        self.rev = int(ledger.get_meta(REV_META) or b"0")
        self.doc_waiters: dict[bytes, list[asyncio.Future[DocumentOutcome]]] = {}
        self.act_waiters: dict[bytes, list[asyncio.Future[Any]]] = {}
        self.ordering_error: str | None = None
        self.alarms: list[str] = []
        self.leader = False
        self.tasks: list[asyncio.Task[None]] = []

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """No block cutter: the orderer's tasks (started by the node) apply proposals.
        Held documents are only reloaded; they are released by the log, never by a
        restart, so every node releases them at the same place."""
        self.state.load_held()

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.etcd.close()
        self.writer.shutdown(wait=True)

    def health(self) -> dict[str, Any]:
        nospace = records_nospace(self.alarms)
        return {
            "ordering": {
                "node_id": self.node_id,
                "proposer": self.leader,
                # false once an epoch replaced this node's key: it signs nothing any more
                "certified": self.members.certified,
                "epoch": trust.open_consortium(self.members_raw, self.bureau.public_key).epoch,
                "applied_seq": self.seq,
                "applied_revision": self.rev,
                "alarms": list(self.alarms),
                "error": self.ordering_error,
            },
            **({"status": "degraded", "error": nospace} if nospace else {}),
        }

    # --- documents -------------------------------------------------------------------------

    async def submit(self, raws: Sequence[bytes], wait: float) -> list[DocumentOutcome]:
        checked = await self._precheck(raws)
        results: list[DocumentOutcome | None] = [None] * len(raws)
        docs = {i: c.doc for i, c in enumerate(checked) if c.doc is not None}
        committed = self.ledger.txs_hashes([d.hash for d in docs.values()])
        to_log: dict[bytes, bytes] = {}
        for i, c in enumerate(checked):
            doc = c.doc
            if doc is None:
                results[i] = _rejected(ChainError(Code.MALFORMED_DOCUMENT, str(c.malformed)))
            elif c.signature_ok is False:
                error = ChainError(
                    Code.BAD_SIGNATURE,
                    f"the signature does not verify with {doc.device_id}'s registered key",
                )
                results[i] = _rejected(error, doc)
            elif doc.hash in committed:
                height, position = committed[doc.hash]
                results[i] = DocumentOutcome(
                    SubmitStatus.DUPLICATE, doc.hash, doc.device_id, doc.counter, height, position
                )
            elif doc.hash in self.state.held_hashes:
                results[i] = DocumentOutcome(
                    SubmitStatus.HELD, doc.hash, doc.device_id, doc.counter
                )
            else:
                to_log.setdefault(doc.hash, doc.raw)
        futures = {h: self._doc_waiter(h) for h in to_log}
        try:
            for name, value in records.doc_entries(list(to_log.values()), list(to_log)):
                await self.append(name, value)
        except EtcdError as exc:
            self._drop_waiters(futures)
            raise ChainError(
                Code.UNAVAILABLE, f"the ordering service cannot be reached ({exc}); send again"
            ) from None
        if futures and wait > 0:
            await asyncio.wait(list(futures.values()), timeout=wait)
        self._drop_waiters(futures)
        for i, doc in docs.items():
            if results[i] is None:
                future = futures[doc.hash]
                results[i] = (
                    future.result()
                    if future.done()
                    else DocumentOutcome(SubmitStatus.PENDING, doc.hash, doc.device_id, doc.counter)
                )
        return [r for r in results if r is not None]

    def _doc_waiter(self, tx_hash: bytes) -> asyncio.Future[DocumentOutcome]:
        future: asyncio.Future[DocumentOutcome] = asyncio.get_running_loop().create_future()
        self.doc_waiters.setdefault(tx_hash, []).append(future)
        return future

    def _drop_waiters(self, futures: dict[bytes, asyncio.Future[DocumentOutcome]]) -> None:
        for tx_hash, future in futures.items():
            waiting = self.doc_waiters.get(tx_hash)
            if waiting and future in waiting:
                waiting.remove(future)
                if not waiting:
                    del self.doc_waiters[tx_hash]

    async def append(self, name: bytes, value: bytes) -> bytes:
        """Create the log entry if absent; the key it is under. An entry already applied
        (the same batch sent again later) is written once more under a new key, so the
        log decides its documents' outcome again (duplicates, by then)."""
        key = self.keys.log_key(name)
        tick = (self.keys.tick,)
        created, existing = await self.etcd.create(key, value, also=tick)
        if created or existing is None or existing.create_revision > self.rev:
            return key
        again = self.keys.log_key(name + existing.create_revision.to_bytes(8, "big"))
        await self.etcd.create(again, value, also=tick)
        return again

    def resolve(self, results: Sequence[DocumentOutcome]) -> None:
        """Answer the submitters waiting on these documents (after their block is final)."""
        for result in results:
            if result.hash is None:
                continue
            for future in self.doc_waiters.pop(result.hash, []):
                if not future.done():
                    future.set_result(_final_copy(result))

    # --- acts ------------------------------------------------------------------------------

    async def request_act(self, name: str, args: dict[str, Any], wait: float) -> Any:
        """Log a bureau act or claim; its outcome once the log applied it and its block
        (if it made one) is final."""
        entry_name, value = records.act_entry(name, args)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        try:
            key = await self.append(entry_name, value)
        except EtcdError as exc:
            raise ChainError(
                Code.UNAVAILABLE, f"the ordering service cannot be reached ({exc}); send again"
            ) from None
        self.act_waiters.setdefault(key, []).append(future)
        try:
            return await asyncio.wait_for(asyncio.shield(future), wait)
        except TimeoutError:
            raise ChainError(
                Code.UNAVAILABLE,
                "accepted but not final yet (no quorum of nodes signing); ask again later",
            ) from None

    def resolve_act(self, key: bytes, outcome: Any) -> None:
        for future in self.act_waiters.pop(key, []):
            if future.done():
                continue
            if isinstance(outcome, ChainError):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    def enqueue(self, tx: Tx) -> asyncio.Future[tuple[int, int]]:
        if not self.applying:
            raise ChainError(Code.UNAVAILABLE, "a consortium node orders acts through its log")
        return super().enqueue(tx)

    async def wait_final(
        self, future: asyncio.Future[tuple[int, int]], wait: float
    ) -> tuple[int, int]:
        """While a proposal is applied an act's transaction goes into the block being
        built, the next one; its submitter is answered once that block is final."""
        if self.applying:
            return self.height + 1, 0
        return await super().wait_final(future, wait)

    # --- blocks ----------------------------------------------------------------------------

    def on_state_replaced(self) -> None:
        """The tip state was rebuilt from the ledger (after a catch-up from peers)."""
        self.mempool.clear()
        self.blocks.blocks.clear()
        for listener in self.state_listeners:
            listener()

    async def commit(
        self, block: Block, txs: list[Tx], meta: dict[str, bytes], *, tip: bool = True
    ) -> None:
        """Write a final block and the ordering watermark in one transaction, retrying a
        failed write (the proposal is applied already: it must not be applied twice).
        `tip`: the block's transactions were admitted into the tip state (not for blocks
        fetched from a peer, after which the state is rebuilt)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                await loop.run_in_executor(self.writer, self._write_with, block, txs, meta)
                break
            except sqlite3.Error as exc:
                self.write_error = f"cannot write block {block.height}: {exc}"
                logger.error("%s; retrying", self.write_error)
                await asyncio.sleep(0.5)
        self.write_error = None
        self.mempool.clear()
        self.height, self.tip_hash = block.height, block.hash
        self.last_time = str(block.header["time"])
        self.blocks.put(block)
        if not tip:
            return
        for position, tx in enumerate(txs):
            self.state.committed(tx, block.height)
            tx.final = (block.height, position)
            if tx.future is not None and not tx.future.done():
                tx.future.set_result(tx.final)

    def _write_with(self, block: Block, txs: list[Tx], meta: dict[str, bytes]) -> None:
        with self.ledger.block_transaction() as db:
            write_block(db, block, txs)
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(meta.items()))

    def record_meta(self, meta: dict[str, bytes]) -> None:
        with self.ledger.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(meta.items()))


def records_nospace(alarms: list[str]) -> str | None:
    if "NOSPACE" in alarms:
        return (
            "etcd raised NOSPACE: its quota is full and it takes no more writes; compact,"
            " defragment and disarm the alarm (docs/consortium.md)"
        )
    return None


def _final_copy(result: DocumentOutcome) -> DocumentOutcome:
    out = DocumentOutcome(
        result.status,
        result.hash,
        result.device_id,
        result.counter,
        result.height,
        result.position,
        result.code,
        result.message,
        dict(result.extra),
    )
    tx = result.tx
    if out.status == SubmitStatus.PENDING and tx is not None and tx.final is not None:
        out.height, out.position = tx.final
        out.status = SubmitStatus.COMMITTED
    return out
