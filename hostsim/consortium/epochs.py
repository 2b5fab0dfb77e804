"""Consortium epochs on a distributed consortium: adding or replacing a node.

One change per epoch, like etcd's own member changes. The bureau's node
signs epoch + 1 (the current node list with one node added, or one node's
key replaced) and puts it in the etcd log as an `epoch` request, so every
node meets it at the same log position. Applying it checks the object (the
bureau's signature, this chain, epoch + 1, the same mode); after the
proposal's block (if any) is final under the current keys, each current
node endorses the new object with its own key (`endorse/<epoch>/<node>`),
and the first endorsement record with the current quorum that verifies
(`endorsed/<epoch>/<node>`, lowest revision) is the epoch's on every node.
The block after that proposal is the first the new keys sign. The epoch,
its endorsements and its first height are written with the proposal's
watermark in one transaction, so a crash cannot leave half a switch.

A node whose key the new epoch replaced signs nothing afterwards (and
refuses to start again); a new or replacing node starts from a fresh
directory holding its own key and the new object, and catches up from its
peers, who hand out the epoch records with the blocks (`peers.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from device.protocol import codec, trust
from device.protocol.keys import PUBLIC_KEY_SIZE
from device.protocol.status import DeviceError
from device.protocol.untrusted import shown
from hostsim.chain import rotation
from hostsim.chain.errors import ChainError, Code
from hostsim.consortium import log as records
from hostsim.consortium.etcd import prefix_end

if TYPE_CHECKING:
    from hostsim.chain.node import Chain
    from hostsim.consortium.engine import ConsortiumEngine

logger = logging.getLogger("taxctl.consortium")

EPOCH_ACT = "epoch"


def next_consortium(chain: Chain, node_id: object, public_key: object) -> bytes:
    """The bureau's epoch + 1: `node_id` added, or its key replaced by `public_key` (hex).
    Only a node holding the bureau's key can sign it."""
    engine = chain.engine
    if not isinstance(node_id, str) or not 1 <= len(node_id) <= 64 or not node_id.isprintable():
        raise ChainError(Code.BAD_REQUEST, "node_id names the node (1 to 64 characters)")
    try:
        key = bytes.fromhex(public_key) if isinstance(public_key, str) else b""
    except ValueError:
        key = b""
    if len(key) != PUBLIC_KEY_SIZE:
        raise ChainError(Code.BAD_REQUEST, "public_key is the node's Ed25519 key in hex")
    current = trust.open_consortium(chain.consortium, chain.bureau.public_key)
    if key in current.nodes.values():
        raise ChainError(Code.BAD_REQUEST, "that key is already a node's in this epoch")
    nodes = {**current.nodes, node_id: key}
    return trust.issue_consortium(
        chain.bureau.key,
        chain.chain_id,
        current.epoch + 1,
        nodes,
        chain.training,
        engine.clock.now(),
    )


def check_next(engine: ConsortiumEngine, raw: object) -> dict[str, Any]:
    """Applying an `epoch` request (the same on every node): the new object must be the
    bureau's, for this chain and mode, the epoch after the current one, one per block."""
    if not isinstance(raw, bytes):
        raise ChainError(Code.BAD_REQUEST, "an epoch request carries the consortium object")
    if engine.pending_epoch is not None:
        raise ChainError(Code.UNAVAILABLE, "one epoch change per block; ask again")
    current = trust.open_consortium(engine.members_raw, engine.bureau.public_key)
    try:
        new = trust.open_consortium(raw, engine.bureau.public_key)
    except DeviceError as exc:
        raise ChainError(Code.BAD_REQUEST, f"the new consortium: {exc.detail}") from None
    if (new.chain_id, new.training, new.epoch) != (
        current.chain_id,
        current.training,
        current.epoch + 1,
    ):
        raise ChainError(
            Code.BAD_REQUEST,
            f"epoch {new.epoch} of {shown(new.chain_id)} does not follow epoch"
            f" {current.epoch} of this chain",
        )
    engine.pending_epoch = raw
    return {"chain_id": new.chain_id, "epoch": new.epoch, "consortium": raw}


async def endorse(engine: ConsortiumEngine, raw: bytes, wake: asyncio.Event) -> list[Any]:
    """The current quorum's endorsements of `raw`, the same record on every node."""
    current = trust.open_consortium(engine.members_raw, engine.bureau.public_key)
    new = trust.open_consortium(raw, engine.bureau.public_key)
    signatures = engine.keys.root + b"endorse/%d/" % new.epoch
    chosen = engine.keys.root + b"endorsed/%d/" % new.epoch
    message = trust.rotation_message(raw)
    me = engine.node_id
    if current.nodes.get(me) == engine.members.key.public_key:
        signature = trust.sign_rotation(engine.members.key, raw)
        await engine.etcd.put(signatures + me.encode(), signature)
    while True:
        wake.clear()
        for kv in sorted(
            await engine.etcd.range(chosen, prefix_end(chosen)), key=lambda kv: kv.create_revision
        ):
            with contextlib.suppress(codec.CodecError):
                entries = codec.decode(kv.value, records.RECORD_LIMITS)
                if not isinstance(entries, list):
                    continue
                good = trust.signers(entries, current.nodes, message)
                if len(good) >= current.quorum and len(good) == len(entries):
                    return entries
        good_entries = []
        for kv in await engine.etcd.range(signatures, prefix_end(signatures)):
            node = kv.key[len(signatures) :].decode("utf-8", "replace")
            entry: dict[str, Any] = {"node_id": node, "signature": kv.value}
            if trust.signers([entry], current.nodes, message):
                good_entries.append(entry)
        if len(good_entries) >= current.quorum:
            good_entries.sort(key=lambda e: str(e["node_id"]))
            await engine.etcd.create(chosen + me.encode(), codec.encode(good_entries))
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), 0.5)


def epoch_meta(
    engine: ConsortiumEngine, raw: bytes, endorsements: list[Any], from_height: int
) -> dict[str, bytes]:
    """The ledger meta that puts epoch `raw` in force from `from_height`."""
    epochs = rotation.load_epochs(engine.ledger)
    epochs.append(rotation.Epoch(raw, endorsements, from_height))
    return {
        "consortium": raw,
        rotation.ENDORSEMENTS_META: codec.encode(endorsements),
        rotation.EPOCHS_META: codec.encode([e.record() for e in epochs]),
    }


def switch(engine: ConsortiumEngine, raw: bytes, endorsements: list[Any], from_height: int) -> None:
    """The new keys count from `from_height` on (the ledger recorded it already)."""
    new = trust.open_consortium(raw, engine.bureau.public_key)
    engine.members.members = dict(new.nodes)
    engine.members_raw = raw
    engine.blocks.attest_from(from_height)
    if not engine.members.certified:
        logger.error("epoch %d replaced this node's key: it signs nothing any more", new.epoch)
    for listener in engine.epoch_listeners:
        listener(raw, endorsements)


def in_force(
    records_: list[rotation.Epoch], bureau_key: bytes, chain_id: str
) -> list[tuple[int, trust.ConsortiumKeys]]:
    """(first height, consortium) of each epoch record, checked as a device checks a
    rotation; ValueError for a record list that does not chain."""
    out: list[tuple[int, trust.ConsortiumKeys]] = []
    for record in records_:
        try:
            keys = trust.open_consortium(record.consortium, bureau_key)
            if out:
                first, last = out[-1]
                if keys.epoch != last.epoch + 1 or record.from_height < first:
                    raise ValueError(f"epoch {keys.epoch} does not follow epoch {last.epoch}")
                trust.check_rotation(record.consortium, record.endorsements, last)
        except DeviceError as exc:
            raise ValueError(exc.detail) from None
        if keys.chain_id != chain_id:
            raise ValueError("an epoch of another chain")
        out.append((record.from_height, keys))
    return out


def consortium_at(epochs: list[tuple[int, trust.ConsortiumKeys]], height: int) -> Any:
    found = epochs[0][1]
    for first, keys in epochs:
        if first <= height:
            found = keys
    return found
