"""`taxctl hostsim chain verify`: re-check a ledger from its first block.

Every block: canonical header bytes, its hash, the link to the previous
block, the Merkle root and count of its transactions (recomputed from the
stored bodies), and a quorum of signatures from the consortium the bureau
certified that was in force at its height (the ledger's epoch record:
each epoch after the first endorsed by the quorum of the one before, the
last one the consortium on record). Every transaction: its hash; every registration: the bureau's
signature; every document: its device's signature, counter and hash
chain. The first failure is reported with its block height.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device.protocol import codec, merkle, trust
from device.protocol.document import ZERO_HASH, DocumentError, parse_document
from device.protocol.status import DeviceError
from hostsim.chain import rotation
from hostsim.chain.ledger import LEDGER_FILE, BlockRow, Ledger, TxRow
from hostsim.chain.tx import TxType, decode_act


class LedgerCorrupt(Exception):
    def __init__(self, height: int, reason: str) -> None:
        super().__init__(f"block {height}: {reason}")
        self.height = height
        self.reason = reason


@dataclass
class Report:
    blocks: int = 0
    transactions: int = 0
    documents: int = 0
    devices: int = 0


def verify_ledger(directory: Path) -> Report:
    if not (directory / LEDGER_FILE).exists():
        raise FileNotFoundError(f"no ledger in {directory}")
    ledger = Ledger(directory)
    try:
        return _verify(ledger)
    finally:
        ledger.close()


def _block_txs(ledger: Ledger, height: int) -> list[TxRow]:
    """The block's transactions, every body read as bytes whatever type it was stored as."""
    rows = ledger.db.execute(
        "SELECT hash, height, position, type, CAST(body AS BLOB), device_id, counter"
        " FROM txs WHERE height=? ORDER BY position",
        (height,),
    ).fetchall()
    return [TxRow(*row) for row in rows]


def _epochs(ledger: Ledger, bureau_key: bytes) -> list[tuple[int, trust.ConsortiumKeys]]:
    """(first height, consortium) of every epoch on record, checked as a device would
    check a rotation: bureau-signed, one chain, epoch + 1 each time, endorsed by the
    previous epoch's quorum, and ending with the consortium the chain serves."""
    try:
        records = rotation.load_epochs(ledger)
    except ValueError as exc:
        raise LedgerCorrupt(0, f"epoch record: {exc}") from None
    if not records or records[-1].consortium != ledger.get_meta("consortium"):
        raise LedgerCorrupt(0, "the epoch record does not end with the consortium on record")
    out: list[tuple[int, trust.ConsortiumKeys]] = []
    for record in records:
        try:
            consortium = trust.open_consortium(record.consortium, bureau_key)
            if out:
                last_height, last = out[-1]
                if consortium.epoch != last.epoch + 1 or consortium.chain_id != last.chain_id:
                    raise LedgerCorrupt(0, f"epoch {consortium.epoch} does not follow {last.epoch}")
                if record.from_height < last_height:
                    raise LedgerCorrupt(0, f"epoch {consortium.epoch} starts below its predecessor")
                trust.check_rotation(record.consortium, record.endorsements, last)
        except DeviceError as exc:
            raise LedgerCorrupt(0, f"consortium record: {exc.detail}") from None
        out.append((record.from_height, consortium))
    return out


def _in_force(epochs: list[tuple[int, trust.ConsortiumKeys]], height: int) -> trust.ConsortiumKeys:
    found = epochs[0][1]
    for first, consortium in epochs:
        if first <= height:
            found = consortium
    return found


def _verify(ledger: Ledger) -> Report:
    training = (ledger.get_meta("training") or b"\x00")[0] == 1
    bureau_key = ledger.get_meta("bureau_key") or b""
    if training and bureau_key != trust.TRAINING_BUREAU.public_key:
        raise LedgerCorrupt(0, "a training chain must name the training bureau key")
    epochs = _epochs(ledger, bureau_key)
    chain_id = (ledger.get_meta("chain_id") or b"").decode()
    replay = _Replay(bureau_key)
    prev = ZERO_HASH
    for expected, block in enumerate(ledger.blocks(), start=1):
        header = _check_block(block, expected, prev, chain_id, epochs)
        for tx in _check_txs(ledger, block.height, header):
            replay.tx(block.height, tx)
        prev = block.hash
        replay.report.blocks += 1
    replay.report.devices = len(replay.keys)
    return replay.report


def _check_block(
    block: BlockRow,
    expected: int,
    prev: bytes,
    chain_id: str,
    epochs: list[tuple[int, trust.ConsortiumKeys]],
) -> dict[str, Any]:
    """The block's header, checked: stored as bytes, canonical, hashed, linked to `prev`
    and signed by a quorum of the consortium in force at its height."""
    h = block.height
    if h != expected:
        raise LedgerCorrupt(expected, f"missing; the next block stored is {h}")
    if not isinstance(block.header, bytes) or not isinstance(block.signatures, bytes):
        raise LedgerCorrupt(h, "header or signatures are not stored as bytes")
    try:
        header = codec.decode_canonical(block.header)
    except codec.CodecError as exc:
        raise LedgerCorrupt(h, f"header does not decode: {exc}") from None
    if not isinstance(header, dict) or set(header) != trust.HEADER_KEYS:
        raise LedgerCorrupt(h, "header fields malformed")
    if hashlib.sha256(block.header).digest() != block.hash:
        raise LedgerCorrupt(h, "stored block hash differs from the header's hash")
    if header["height"] != h or header["chain_id"] != chain_id:
        raise LedgerCorrupt(h, "header names another height or chain")
    if header["prev_hash"] != prev:
        raise LedgerCorrupt(h, "prev_hash does not link to the previous block")
    try:
        consortium = _in_force(epochs, h)
        trust.check_quorum(header, codec.decode(block.signatures), consortium)
    except (DeviceError, codec.CodecError) as exc:
        raise LedgerCorrupt(h, f"quorum: {exc}") from None
    return header


def _check_txs(ledger: Ledger, h: int, header: dict[str, Any]) -> list[TxRow]:
    """The block's transactions, checked against the header: all there, in place, each
    body matching its hash, and together the header's Merkle root."""
    txs = _block_txs(ledger, h)
    if [t.position for t in txs] != list(range(len(txs))) or len(txs) != header["tx_count"]:
        raise LedgerCorrupt(h, "transactions missing or out of place")
    for tx in txs:
        if not isinstance(tx.body, bytes) or hashlib.sha256(tx.body).digest() != tx.hash:
            raise LedgerCorrupt(h, f"transaction {tx.position}: body does not match its hash")
    if merkle.root([t.hash for t in txs]) != header["merkle_root"]:
        raise LedgerCorrupt(h, "Merkle root does not match the transactions")
    return txs


@dataclass
class _Replay:
    """The transactions replayed in order: device keys from registrations, each device's
    hash chain tip from its documents."""

    bureau_key: bytes
    report: Report = field(default_factory=Report)
    keys: dict[str, bytes] = field(default_factory=dict)
    tips: dict[str, tuple[int, bytes]] = field(default_factory=dict)

    def tx(self, h: int, tx: TxRow) -> None:
        if tx.type == TxType.DOCUMENT:
            self._document(h, tx)
        else:
            self._act(h, tx)
        self.report.transactions += 1

    def _document(self, h: int, tx: TxRow) -> None:
        where = f"transaction {tx.position}"
        try:
            doc = parse_document(tx.body)
        except DocumentError as exc:
            raise LedgerCorrupt(h, f"{where}: {exc}") from None
        key = self.keys.get(doc.device_id)
        if key is None or not doc.verify(key):
            raise LedgerCorrupt(h, f"{where}: signature of {doc.device_id} does not verify")
        last, last_hash = self.tips.get(doc.device_id, (0, ZERO_HASH))
        if (doc.counter, doc.prev_hash) != (last + 1, last_hash):
            raise LedgerCorrupt(h, f"{where}: breaks {doc.device_id}'s hash chain")
        if (tx.device_id, tx.counter) != (doc.device_id, doc.counter):
            raise LedgerCorrupt(h, f"{where}: index columns differ from the document")
        self.tips[doc.device_id] = (doc.counter, doc.hash)
        self.report.documents += 1

    def _act(self, h: int, tx: TxRow) -> None:
        try:
            act = decode_act(tx.body)
            if act["type"] == TxType.REGISTER:
                cert = trust.open_certificate(act["certificate"], self.bureau_key)
                self.keys[cert.device_id] = cert.public_key
            elif act["type"] == TxType.SEGMENT:
                trust.open_segment(act["segment"], self.bureau_key)
        except (ValueError, KeyError, DeviceError) as exc:
            raise LedgerCorrupt(h, f"transaction {tx.position}: {exc}") from None
