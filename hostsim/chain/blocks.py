"""Blocks: header assembly, Merkle trees over transaction hashes, and receipts.

A header is the deterministic CBOR map of `device.protocol.trust`
(chain_id, height, prev_hash, merkle_root, time, tx_count); nodes sign
BLOCK_DOMAIN + header bytes. A receipt names one document, its place in
the block, the audit path to the root and the node signatures: everything
a device needs to check it with the consortium keys it pinned. A batch's
answer can instead carry compact receipts, which name their block by
height, and each block's header and signatures once.

After a rotation, a block older than the current epoch is handed out with
the current nodes' signatures over its (unchanged) header, not the ones
stored with it: a device checks receipts against the one consortium it
holds, and keys a rotation replaced must sign nothing it accepts.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from device.protocol import chainapi, codec, merkle, trust
from hostsim.chain.ledger import Ledger
from hostsim.chain.quorum import NodeSet


@dataclass(slots=True)
class Block:
    header: dict[str, Any]
    hash: bytes
    signatures: list[dict[str, Any]]
    tx_hashes: list[bytes]
    tree: list[list[bytes]]

    @property
    def height(self) -> int:
        return int(self.header["height"])

    def receipt(
        self, position: int, device_id: str | None, counter: int | None, *, compact: bool = False
    ) -> dict[str, Any]:
        """The full receipt; `compact` names the block by height instead of carrying its
        header and signatures, which an answer then lists once (see `attestation`)."""
        if compact:
            return self._compact_receipt(position, device_id, counter)
        return chainapi.receipt(
            self.tx_hashes[position],
            position,
            merkle.audit_path(self.tree, position),
            self.attestation(),
            device_id,
            counter,
        )

    def _compact_receipt(
        self, position: int, device_id: str | None, counter: int | None
    ) -> dict[str, Any]:
        """`chainapi.compact_receipt` of the full receipt, field for field and in its order
        (a test compares them), without building the full one and its attestation first:
        a batch's answer makes one per document."""
        out: dict[str, Any] = {
            "doc_hash": self.tx_hashes[position],
            "position": position,
            "proof": merkle.audit_path(self.tree, position),
            "height": self.header["height"],
        }
        if device_id is not None:
            out["device_id"] = device_id
            out["counter"] = counter
        return out

    def attestation(self) -> dict[str, Any]:
        """What compact receipts leave out: the header and the node signatures over it."""
        return chainapi.attestation(self.header, self.signatures)


def assemble(
    chain_id: str, height: int, prev_hash: bytes, tx_hashes: Sequence[bytes], time: str
) -> Block:
    tree = merkle.levels(tx_hashes)
    header = {
        "chain_id": chain_id,
        "height": height,
        "prev_hash": prev_hash,
        "merkle_root": tree[-1][0],
        "time": time,
        "tx_count": len(tx_hashes),
    }
    return Block(header, trust.block_hash(header), [], list(tx_hashes), tree)


class BlockCache:
    """Recent blocks with their trees, so receipts for a batch cost no re-hashing."""

    def __init__(self, ledger: Ledger, nodes: NodeSet, size: int = 32) -> None:
        self.ledger = ledger
        self.nodes = nodes
        self.size = size
        self.blocks: OrderedDict[int, Block] = OrderedDict()
        # Blocks below this height were signed by an earlier epoch's nodes.
        self.current_from = 1

    def attest_from(self, height: int) -> None:
        """The current epoch signs from `height` on; cached blocks below it carry the
        old signatures, so they are dropped and re-attested on their next use."""
        self.current_from = height
        self.blocks.clear()

    def reattest(self, header: dict[str, Any], stored: bytes) -> list[dict[str, Any]]:
        """Signatures for a block of an earlier epoch: every current node's, here."""
        return self.nodes.sign(header)

    def put(self, block: Block) -> None:
        self.blocks[block.height] = block
        self.blocks.move_to_end(block.height)
        while len(self.blocks) > self.size:
            self.blocks.popitem(last=False)

    def get(self, height: int) -> Block | None:
        block = self.blocks.get(height)
        if block is not None:
            self.blocks.move_to_end(height)
            return block
        row = self.ledger.block(height)
        if row is None:
            return None
        hashes = [tx.hash for tx in self.ledger.block_txs(height)]
        header = codec.decode(row.header)
        signatures = (
            self.reattest(header, row.signatures)
            if height < self.current_from
            else codec.decode(row.signatures)
        )
        block = Block(header, row.hash, signatures, hashes, merkle.levels(hashes))
        self.put(block)
        return block
