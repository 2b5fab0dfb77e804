"""Writing one finalized block into the ledger: the block, its transactions, and the
indexes they move (device tips, invoices, credits, claims, red-letter confirmations
and their uses, history), in one SQL
transaction opened by the caller. An invoice's "issued" event is its own row in
`invoices`; `history` holds what happened to it later (credits, claims)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from device.protocol import codec, trust
from device.protocol.document import Document, Kind
from hostsim.chain.blocks import Block
from hostsim.chain.tx import Tx, TxType


def write_block(db: sqlite3.Connection, block: Block, txs: Sequence[Tx]) -> None:
    height = block.height
    db.execute(
        "INSERT INTO blocks VALUES (?, ?, ?, ?)",
        (height, block.hash, trust.header_bytes(block.header), codec.encode(block.signatures)),
    )
    db.executemany(
        "INSERT INTO txs (hash, height, position, type, body, device_id, counter)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (tx.hash, height, pos, tx.type.value, tx.body, tx.device_id, tx.counter)
            for pos, tx in enumerate(txs)
        ],
    )
    rows = _Rows(height, str(block.header["time"]))
    for tx in txs:
        if tx.type == TxType.DOCUMENT:
            assert tx.doc is not None
            rows.document(tx.doc)
        elif tx.type == TxType.REGISTER:
            cert: trust.DeviceCert = tx.fields["_cert"]
            db.execute(
                "INSERT INTO devices VALUES (?, ?, ?, NULL, NULL, 0, ?, '')",
                (cert.device_id, cert.raw, height, bytes(32)),
            )
            for seg in tx.fields["_segments"]:
                _segment(db, seg, height)
        elif tx.type == TxType.SEGMENT:
            _segment(db, tx.fields["_segment"], height)
        elif tx.type == TxType.REVOKE:
            db.execute(
                "UPDATE devices SET revoked_height=?, revoked_reason=? WHERE device_id=?",
                (height, tx.fields["reason"], tx.fields["device_id"]),
            )
        elif tx.type == TxType.CLAIM:
            rows.claim(tx.fields)
        elif tx.type == TxType.CONFIRM:
            rows.confirm(tx.fields)
    rows.write(db)
    _many(
        db,
        "DELETE FROM held WHERE hash=?",
        [(tx.hash,) for tx in txs if tx.type == TxType.DOCUMENT],
    )


@dataclass
class _Rows:
    """The index rows one block's transactions add, gathered in block order and then
    written with one statement per table."""

    height: int
    at: str  # the block's time
    tips: dict[str, Document] = field(default_factory=dict)
    invoices: list[tuple[Any, ...]] = field(default_factory=list)
    credits: list[tuple[int, str, str]] = field(default_factory=list)
    claims: list[tuple[str, int, str, str]] = field(default_factory=list)
    confirmations: list[tuple[Any, ...]] = field(default_factory=list)
    uses: list[tuple[bytes, int, str]] = field(default_factory=list)
    history: list[tuple[Any, ...]] = field(default_factory=list)

    def _event(self, code: str, number: str, event: str, **detail: Any) -> None:
        self.history.append(
            (code, number, self.height, self.at, event, json.dumps(detail, sort_keys=True))
        )

    def document(self, doc: Document) -> None:
        self.tips[doc.device_id] = doc
        if doc.code is None or doc.number is None:
            return  # a report: it moves the device's tip only
        p = doc.payload
        buyer = p["buyer"] or {}
        self.invoices.append(
            (
                doc.code,
                doc.number,
                doc.hash,
                doc.device_id,
                doc.counter,
                p["kind"],
                p["seller"].get("tax_id", ""),
                buyer.get("tax_id"),
                doc.total,
                0,
                p["issued_at"],
                doc.check_code,
                int(doc.training),
                None,
                None,
            )
        )
        if doc.kind == Kind.CREDIT:
            ref = p["refers_to"]
            self.credits.append((-doc.total, ref["code"], ref["number"]))
            self._event(
                ref["code"],
                ref["number"],
                "credited",
                amount=-doc.total,
                by_code=doc.code,
                by_number=doc.number,
            )
            if "confirmation" in p:
                self.uses.append((doc.hash, self.height, p["confirmation"]))

    def claim(self, f: dict[str, Any]) -> None:
        self.claims.append((f["buyer_id"], self.height, f["code"], f["number"]))
        self._event(f["code"], f["number"], "claimed", buyer_id=f["buyer_id"])

    def confirm(self, f: dict[str, Any]) -> None:
        self.confirmations.append(
            (f["id"], f["code"], f["number"], f["amount"], f["buyer_id"], self.height, None, None)
        )
        self._event(
            f["code"],
            f["number"],
            "credit_confirmed",
            confirmation=f["id"],
            amount=f["amount"],
            buyer_id=f["buyer_id"],
        )

    def write(self, db: sqlite3.Connection) -> None:
        _many(
            db,
            "INSERT INTO invoices VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            self.invoices,
        )
        _many(
            db,
            "UPDATE invoices SET credited = credited + ? WHERE code=? AND number=?",
            self.credits,
        )
        _many(
            db,
            "UPDATE invoices SET claimed_by=?, claimed_height=? WHERE code=? AND number=?",
            self.claims,
        )
        # confirmations before their uses: a credit note may be in the block that confirms it
        _many(db, "INSERT INTO confirmations VALUES (?, ?, ?, ?, ?, ?, ?, ?)", self.confirmations)
        _many(db, "UPDATE confirmations SET used_by=?, used_height=? WHERE id=?", self.uses)
        _many(db, "INSERT INTO history VALUES (?, ?, ?, ?, ?, ?)", self.history)
        _many(
            db,
            "UPDATE devices SET last_counter=?, last_hash=?, last_issued_at=? WHERE device_id=?",
            [(d.counter, d.hash, d.payload["issued_at"], dev) for dev, d in self.tips.items()],
        )


def _many(db: sqlite3.Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    """executemany, except for no rows: most blocks have no credits, claims or
    confirmations, and each empty statement still cost a prepare and a step."""
    if rows:
        db.executemany(sql, rows)


def _segment(db: sqlite3.Connection, seg: trust.Segment, height: int) -> None:
    db.execute(
        "INSERT INTO segments VALUES (?, ?, ?, ?, ?, ?)",
        (seg.raw, seg.device_id, seg.code, seg.start, seg.end, height),
    )
