"""Ordering and finality: proposals from etcd, applied in revision order, signed, final.

Proposal `seq` names the log entries created in revisions (from, to]. Every
node reads exactly those, in revision order, and admits them with the
embedded chain's rules, the proposal's time standing in for the clock: the
same held, rejected and equivocation outcomes everywhere, hence the same
block. Each node signs its header — at most one header per height, the fact
recorded in its ledger before the signature leaves — and publishes the
signature. A node that sees 2f+1 valid signatures over its own header
publishes them as a final record; the final record created first (lowest
revision) that verifies is the block's on every node, so every ledger stores
the same signatures. Signatures over a different header at the same height
are evidence against their node, kept in the ledger.

etcd decides the order, and its majority is needed to make progress; it is
not trusted for safety: a conflicting block would need 2f+1 node keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

from device.protocol import codec, trust
from device.protocol.document import format_utc, parse_utc
from device.protocol.keys import verify
from hostsim.chain import rotation
from hostsim.chain.blocks import Block, assemble
from hostsim.chain.engine import DocumentOutcome
from hostsim.consortium import epochs, housekeeping, peers
from hostsim.consortium import log as records
from hostsim.consortium.engine import REV_META, SEQ_META, SIGNED_META, ConsortiumEngine
from hostsim.consortium.etcd import KV, EtcdError, prefix_end

logger = logging.getLogger("taxctl.consortium")

MAX_ENTRIES = 16  # log entries per proposal: at most 16 MiB of documents
CLOCK_SKEW = 120.0  # a proposal's time within this of the node's clock, or it does not sign
# Test-only fault: a node that signs a different header than the one it built.
FAULT_ENV = "TAXCTL_CONSORTIUM_FAULT"

EVIDENCE_SCHEMA = """
CREATE TABLE IF NOT EXISTS node_evidence (
    height INTEGER NOT NULL,
    node_id TEXT NOT NULL,
    header BLOB NOT NULL,
    signature BLOB NOT NULL,
    agreed_hash BLOB NOT NULL,
    PRIMARY KEY (height, node_id, header)
) WITHOUT ROWID;
"""


class Diverged(Exception):
    """A quorum finalized a header this node did not build."""


class Orderer:
    def __init__(self, engine: ConsortiumEngine, acts: Any) -> None:
        self.engine = engine
        self.acts = acts
        self.etcd = engine.etcd
        self.keys = engine.keys
        self.nodes = engine.members
        self.wake = asyncio.Event()
        self.fault = os.environ.get(FAULT_ENV, "")
        engine.ledger.db.executescript(EVIDENCE_SCHEMA)
        last = engine.ledger.block(engine.height)
        if last is not None:
            engine.last_time = str(codec.decode(last.header)["time"])

    async def run(self) -> None:
        while self._joining():
            await self._from_peers()
            if self._joining():
                await asyncio.sleep(1.0)
        while True:
            try:
                prop = await self._next_proposal(self.engine.seq + 1)
                if prop is not None:
                    await self._apply(prop)
                self.engine.ordering_error = None
            except Diverged:
                await self._from_peers()
            except EtcdError as exc:
                self.engine.ordering_error = str(exc)[:300]
                await asyncio.sleep(0.2)

    def _joining(self) -> bool:
        """A node added or replaced in a later epoch starts with an empty ledger and that
        epoch's object only: its peers hand it the blocks and epochs before it (the log's
        earlier proposals are for keys it does not have)."""
        engine = self.engine
        if engine.height > 0 or engine.ledger.get_meta(rotation.EPOCHS_META) is not None:
            return False
        return trust.open_consortium(engine.members_raw, engine.bureau.public_key).epoch > 1

    async def _from_peers(self) -> None:
        self.engine.applying, self.engine.pinned.pinned = False, None
        self.engine.pending_epoch = None
        try:
            await peers.catch_up(self.engine)
        except (peers.CatchUpFailed, EtcdError) as exc:
            self.engine.ordering_error = f"catching up from peers: {str(exc)[:200]}"
            await asyncio.sleep(1.0)
            return
        self.engine.on_state_replaced()
        last = self.engine.ledger.block(self.engine.height)
        if last is not None:
            self.engine.last_time = str(codec.decode(last.header)["time"])

    async def _trimmed(self, seq: int) -> bool:
        """Whether proposal `seq` is gone from etcd (the other nodes applied it, and this
        one was away longer than the retention): then only peers have its block. A stray
        later proposal key is not enough: f+1 nodes (one honest at least) must report
        having applied past `seq`."""
        prefix = self.keys.prop
        kvs = await self.etcd.range(prefix, prefix_end(prefix), keys_only=True)
        seqs = [s for s in (records.seq_of(kv.key, prefix) for kv in kvs) if s is not None]
        if not seqs or min(seqs) <= seq:
            return False
        marks = await housekeeping.watermarks(self.engine)
        ahead = [n for n, (done, _) in marks.items() if n != self.nodes.node_id and done >= seq]
        faulty = (len(self.nodes.members) - 1) // 3
        return len(ahead) >= faulty + 1

    async def _wait(self, timeout: float = 0.5) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), timeout)

    # --- proposals -------------------------------------------------------------------------

    async def _next_proposal(self, seq: int) -> records.Proposal | None:
        """Proposal `seq` once it is there; None after catching up from peers instead."""
        while True:
            self.wake.clear()
            kv = await self.etcd.get(self.keys.prop_key(seq))
            if kv is not None:
                problem, prop = self._check_proposal(seq, kv)
                if prop is not None:
                    return prop
                self.engine.ordering_error = f"proposal {seq}: {problem}"
            elif await self._trimmed(seq):
                await self._from_peers()
                return None
            elif self.engine.leader and await self._propose(seq):
                continue
            await self._wait()

    def _check_proposal(self, seq: int, kv: KV) -> tuple[str, records.Proposal | None]:
        try:
            prop = records.read_proposal(kv.value)
        except records.BadRecord as exc:
            return str(exc), None
        if prop.seq != seq or prop.start != self.engine.rev:
            return f"names entries after {prop.start}, this node applied to {self.engine.rev}", None
        if prop.end >= kv.create_revision:
            return "names entries written after it", None
        if prop.time < self.engine.last_time:
            return "its time is before the previous block's", None
        return "", prop

    async def _propose(self, seq: int) -> bool:
        """Cut the next proposal from the entries written since the last one; False if
        there are none."""
        log = self.keys.log
        pending = await self.etcd.range(
            log, prefix_end(log), min_create_revision=self.engine.rev + 1, keys_only=True
        )
        if not pending:
            return False
        revisions = sorted(kv.create_revision for kv in pending)
        end = revisions[min(len(revisions), MAX_ENTRIES) - 1]
        time = max(format_utc(self.engine.pinned.base.now()), self.engine.last_time)
        prop = records.Proposal(seq, self.engine.rev, end, time)
        await self.etcd.create(self.keys.prop_key(seq), prop.encode())
        return True

    # --- applying --------------------------------------------------------------------------

    async def _apply(self, prop: records.Proposal) -> None:
        engine = self.engine
        docs, acts = await self._admit(prop)
        meta = {SEQ_META: str(prop.seq).encode(), REV_META: str(prop.end).encode()}
        txs = list(engine.mempool)
        block: Block | None = None
        if txs:
            block = assemble(
                engine.chain_id,
                engine.height + 1,
                engine.tip_hash,
                [t.hash for t in txs],
                prop.time,
            )
            block.signatures = await self._finalize(prop, block)
        # an epoch change: endorsed under the current keys, in force from the next block
        raw, endorsements = engine.pending_epoch, []
        first = (block.height if block is not None else engine.height) + 1
        if raw is not None:
            endorsements = await epochs.endorse(engine, raw, self.wake)
            meta.update(epochs.epoch_meta(engine, raw, endorsements, first))
        if block is not None:
            await engine.commit(block, txs, meta)
        else:
            engine.record_meta(meta)
        if raw is not None:
            epochs.switch(engine, raw, endorsements, first)
            engine.pending_epoch = None
        engine.seq, engine.rev = prop.seq, prop.end
        engine.resolve(docs)
        for key, name, outcome in acts:
            engine.resolve_act(key, self.acts.final_answer(name, outcome))

    async def _admit(
        self, prop: records.Proposal
    ) -> tuple[list[DocumentOutcome], list[tuple[bytes, str, Any]]]:
        """Admit the proposal's log entries in revision order, the block's time as clock."""
        log = self.keys.log
        kvs = await self.etcd.range(
            log, prefix_end(log), min_create_revision=prop.start + 1, max_create_revision=prop.end
        )
        kvs.sort(key=lambda kv: kv.create_revision)
        engine = self.engine
        docs: list[DocumentOutcome] = []
        acts: list[tuple[bytes, str, Any]] = []
        engine.pending_epoch = None
        engine.applying, engine.pinned.pinned = True, float(parse_utc(prop.time))
        try:
            engine.state.expire_held(engine.pinned.now())
            for kv in kvs:
                try:
                    entry = records.read_entry(kv.value)
                except records.BadRecord as exc:  # the same skip on every node
                    logger.warning("log entry at revision %d skipped: %s", kv.create_revision, exc)
                    continue
                if entry.docs is not None:
                    docs.extend(await engine.admit(entry.docs))
                elif entry.act is not None:
                    acts.append((kv.key, entry.act, await self.acts.run(entry.act, entry.args)))
        finally:
            engine.applying, engine.pinned.pinned = False, None
        return docs, acts

    # --- signing and finality --------------------------------------------------------------

    async def _finalize(self, prop: records.Proposal, block: Block) -> list[dict[str, Any]]:
        header = trust.header_bytes(block.header)
        if self._may_sign(prop, block):
            await self._publish_signature(prop.seq, block)
        while True:
            self.wake.clear()
            chosen = await self._final(prop.seq, header)
            if chosen is not None:
                return chosen
            good = await self._signatures(prop.seq, header, block)
            if len(good) >= self.nodes.quorum:
                entries = [{"node_id": n, "signature": good[n]} for n in sorted(good)]
                await self.etcd.create(
                    self.keys.final_prefix(prop.seq) + self.nodes.node_id.encode(),
                    records.final_value(header, entries),
                )
                continue
            await self._wait()

    def _may_sign(self, prop: records.Proposal, block: Block) -> bool:
        """At most one header per height; and only for a proposal stamped near now; never
        with a key the epoch in force no longer certifies."""
        if not self.nodes.certified:
            return False
        signed = self.engine.ledger.get_meta(SIGNED_META)
        if signed is not None:
            height_text, _, hash_hex = signed.decode().partition(":")
            height = int(height_text)
            if height > block.height or (height == block.height and hash_hex != block.hash.hex()):
                if height == block.height:
                    logger.error("height %d: already signed another header; not signing", height)
                return False
        skew = abs(parse_utc(prop.time) - self.engine.pinned.base.now())
        if skew > CLOCK_SKEW and not self.fault:
            self.engine.ordering_error = (
                f"proposal {prop.seq} is stamped {prop.time}, {skew:.0f} s from this node's"
                " clock; not signing it"
            )
            return False
        return True

    async def _publish_signature(self, seq: int, block: Block) -> None:
        header = dict(block.header)
        if self.fault == "equivocate":
            # the fault under test: a signature over a header nobody else built
            header["time"] = format_utc(parse_utc(header["time"]) + 1)
        else:
            # on disk before the signature can leave this process
            self.engine.record_meta({SIGNED_META: f"{block.height}:{block.hash.hex()}".encode()})
        signature = trust.sign_header(self.nodes.key, header)
        value = records.signature_value(trust.header_bytes(header), signature)
        await self.etcd.put(self.keys.sig_prefix(seq) + self.nodes.node_id.encode(), value)
        if self.fault == "equivocate":
            own = [{"node_id": self.nodes.node_id, "signature": signature}]
            await self.etcd.create(
                self.keys.final_prefix(seq) + self.nodes.node_id.encode(),
                records.final_value(trust.header_bytes(header), own),
            )

    async def _final(self, seq: int, header: bytes) -> list[dict[str, Any]] | None:
        """The signatures of the first final record for `seq` that verifies over `header`."""
        prefix = self.keys.final_prefix(seq)
        kvs = await self.etcd.range(prefix, prefix_end(prefix))
        message = trust.BLOCK_DOMAIN + header
        for kv in sorted(kvs, key=lambda kv: kv.create_revision):
            try:
                final_header, entries = records.read_final(kv.value)
            except records.BadRecord:
                continue
            good = trust.signers(entries, self.nodes.members, trust.BLOCK_DOMAIN + final_header)
            if len(good) < self.nodes.quorum or len(good) != len(entries):
                continue
            if final_header != header:
                # With at most f faulty nodes a quorum only signs what honest nodes built:
                # this node is the one that diverged (e.g. held documents a peer catch-up
                # did not carry over); it takes the final blocks from its peers.
                logger.error("block %d: a quorum finalized another header; asking peers", seq)
                raise Diverged(seq)
            if trust.signers(entries, self.nodes.members, message) == good:
                return list(entries)
        return None

    async def _signatures(self, seq: int, header: bytes, block: Block) -> dict[str, bytes]:
        """Good signatures over `header` by node; good ones over another header of this
        height are recorded as evidence against their node."""
        prefix = self.keys.sig_prefix(seq)
        good: dict[str, bytes] = {}
        for kv in await self.etcd.range(prefix, prefix_end(prefix)):
            node_id = kv.key[len(prefix) :].decode("utf-8", "replace")
            public = self.nodes.members.get(node_id)
            if public is None:
                continue
            try:
                signed, signature = records.read_signature(kv.value)
            except records.BadRecord:
                continue
            if not verify(public, trust.BLOCK_DOMAIN + signed, signature):
                continue
            if signed == header:
                good[node_id] = signature
            else:
                self._evidence(node_id, signed, signature, block)
        return good

    def _evidence(self, node_id: str, signed: bytes, signature: bytes, block: Block) -> None:
        try:
            other = codec.decode_canonical(signed)
        except codec.CodecError:
            return
        if not isinstance(other, dict) or other.get("height") != block.height:
            return
        with self.engine.ledger.transaction() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO node_evidence VALUES (?, ?, ?, ?, ?)",
                (block.height, node_id, signed, signature, block.hash),
            )
        if cur.rowcount:
            logger.error(
                "node %s signed a different header at height %d: evidence recorded",
                node_id,
                block.height,
            )
