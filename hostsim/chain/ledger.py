"""The chain's persistent state in SQLite: blocks, transactions and the indexes built from them.

WAL with synchronous=FULL: a block is applied in one transaction (block
row, its transactions, and every index they move), so a kill at any moment
leaves either the whole block or none of it. Blocks and transaction bodies
are the record `chain verify` re-checks; the other tables are derived
indexes for validation and queries, plus the bureau's own registry of
buyers, their red-letter confirmations, and the fraud evidence
(equivocations, held documents) that is not on the chain because it was
never accepted.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LEDGER_FILE = "ledger.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY,
    hash BLOB NOT NULL UNIQUE,
    header BLOB NOT NULL,
    signatures BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS txs (
    hash BLOB NOT NULL UNIQUE,
    height INTEGER NOT NULL,
    position INTEGER NOT NULL,
    type TEXT NOT NULL,
    body BLOB NOT NULL,
    device_id TEXT,
    counter INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS txs_position ON txs(height, position);
CREATE UNIQUE INDEX IF NOT EXISTS txs_device ON txs(device_id, counter)
    WHERE counter IS NOT NULL;
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    certificate BLOB NOT NULL,
    registered_height INTEGER NOT NULL,
    revoked_height INTEGER,
    revoked_reason TEXT,
    last_counter INTEGER NOT NULL DEFAULT 0,
    last_hash BLOB NOT NULL,
    last_issued_at TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS segments (
    raw BLOB PRIMARY KEY,
    device_id TEXT NOT NULL,
    code TEXT NOT NULL,
    start INTEGER NOT NULL,
    "end" INTEGER NOT NULL,
    height INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS segments_code ON segments(code, start);
CREATE TABLE IF NOT EXISTS invoices (
    code TEXT NOT NULL,
    number TEXT NOT NULL,
    hash BLOB NOT NULL,
    device_id TEXT NOT NULL,
    counter INTEGER NOT NULL,
    kind TEXT NOT NULL,
    seller_tax_id TEXT NOT NULL,
    buyer_tax_id TEXT,
    total INTEGER NOT NULL,
    credited INTEGER NOT NULL DEFAULT 0,
    issued_at TEXT NOT NULL,
    check_code TEXT NOT NULL,
    training INTEGER NOT NULL,
    claimed_by TEXT,
    claimed_height INTEGER,
    PRIMARY KEY (code, number)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history (
    code TEXT NOT NULL,
    number TEXT NOT NULL,
    height INTEGER NOT NULL,
    at TEXT NOT NULL,
    event TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_invoice ON history(code, number);
CREATE TABLE IF NOT EXISTS held (
    hash BLOB PRIMARY KEY,
    device_id TEXT NOT NULL,
    counter INTEGER NOT NULL,
    body BLOB NOT NULL,
    received_at TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS equivocations (
    id INTEGER PRIMARY KEY,
    device_id TEXT NOT NULL,
    counter INTEGER NOT NULL,
    code TEXT,
    number TEXT,
    rule TEXT NOT NULL,
    existing_hash BLOB NOT NULL,
    existing_body BLOB NOT NULL,
    offending_hash BLOB NOT NULL UNIQUE,
    offending_body BLOB NOT NULL,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS enrolments (
    code_hash BLOB PRIMARY KEY,
    tax_id TEXT NOT NULL,
    name TEXT NOT NULL,
    devices INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    created_at TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS enrolment_uses (
    code_hash BLOB NOT NULL,
    device_id TEXT NOT NULL,
    PRIMARY KEY (code_hash, device_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS segment_nonces (
    nonce BLOB PRIMARY KEY,
    device_id TEXT NOT NULL,
    at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS segment_nonces_at ON segment_nonces(at);
CREATE TABLE IF NOT EXISTS confirmations (
    id TEXT PRIMARY KEY,
    code TEXT NOT NULL,
    number TEXT NOT NULL,
    amount INTEGER NOT NULL,
    buyer_id TEXT NOT NULL,
    height INTEGER NOT NULL,
    used_by BLOB,
    used_height INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS buyers (
    buyer_id TEXT PRIMARY KEY,
    tax_id TEXT NOT NULL,
    name TEXT NOT NULL,
    key_hash BLOB NOT NULL UNIQUE,
    created_at TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS taxpayer_tokens (
    token_hash BLOB PRIMARY KEY,
    tax_id TEXT NOT NULL
) WITHOUT ROWID;
"""


TX_COLUMNS = "hash, height, position, type, body, device_id, counter"


@dataclass(frozen=True, slots=True)
class TxRow:
    hash: bytes
    height: int
    position: int
    type: str
    body: bytes
    device_id: str | None
    counter: int | None


@dataclass(frozen=True, slots=True)
class BlockRow:
    height: int
    hash: bytes
    header: bytes
    signatures: bytes


class Ledger:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / LEDGER_FILE
        self.db = self._connect()
        self.db.executescript(SCHEMA)
        # Blocks are written from a worker thread on their own connection, so the
        # event loop keeps admitting documents (reading through WAL) during the fsync.
        self.writer = self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=10000")
        return db

    def close(self) -> None:
        self.writer.close()
        self.db.close()

    # --- meta ------------------------------------------------------------------------------

    def get_meta(self, key: str) -> bytes | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def set_meta(self, key: str, value: bytes) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # --- writing ---------------------------------------------------------------------------

    def transaction(self) -> _Transaction:
        return _Transaction(self.db)

    def block_transaction(self) -> _Transaction:
        """On the writer connection: only from the one thread that writes blocks."""
        return _Transaction(self.writer)

    # --- blocks and transactions -----------------------------------------------------------

    def height(self) -> int:
        row = self.db.execute("SELECT max(height) FROM blocks").fetchone()
        return int(row[0] or 0)

    def block(self, height: int) -> BlockRow | None:
        row = self.db.execute(
            "SELECT height, hash, header, signatures FROM blocks WHERE height=?", (height,)
        ).fetchone()
        return None if row is None else BlockRow(row[0], row[1], row[2], row[3])

    def blocks(self) -> Iterator[BlockRow]:
        for row in self.db.execute(
            "SELECT height, hash, header, signatures FROM blocks ORDER BY height"
        ):
            yield BlockRow(row[0], row[1], row[2], row[3])

    def tx(self, tx_hash: bytes) -> TxRow | None:
        row = self.db.execute(f"SELECT {TX_COLUMNS} FROM txs WHERE hash=?", (tx_hash,)).fetchone()
        return None if row is None else TxRow(*row)

    def txs_hashes(self, tx_hashes: Sequence[bytes]) -> dict[bytes, tuple[int, int]]:
        """(height, position) of those of `tx_hashes` that are committed."""
        out: dict[bytes, tuple[int, int]] = {}
        for start in range(0, len(tx_hashes), 500):
            chunk = tx_hashes[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for h, height, pos in self.db.execute(
                f"SELECT hash, height, position FROM txs WHERE hash IN ({marks})", chunk
            ):
                out[bytes(h)] = (height, pos)
        return out

    def block_txs(self, height: int) -> list[TxRow]:
        rows = self.db.execute(
            f"SELECT {TX_COLUMNS} FROM txs WHERE height=? ORDER BY position", (height,)
        ).fetchall()
        return [TxRow(*row) for row in rows]

    def device_tx(self, device_id: str, counter: int) -> TxRow | None:
        row = self.db.execute(
            f"SELECT {TX_COLUMNS} FROM txs WHERE device_id=? AND counter=?", (device_id, counter)
        ).fetchone()
        return None if row is None else TxRow(*row)

    def device_documents(self, device_id: str, after: int, limit: int) -> list[TxRow]:
        rows = self.db.execute(
            f"SELECT {TX_COLUMNS} FROM txs WHERE device_id=? AND counter>?"
            " ORDER BY counter LIMIT ?",
            (device_id, after, limit),
        ).fetchall()
        return [TxRow(*row) for row in rows]

    # --- devices ---------------------------------------------------------------------------

    def device_rows(self) -> list[tuple[Any, ...]]:
        return self.db.execute(
            "SELECT device_id, certificate, registered_height, revoked_height, revoked_reason,"
            " last_counter, last_hash, last_issued_at FROM devices"
        ).fetchall()

    def device_tip(self, device_id: str) -> tuple[int, bytes] | None:
        """The device's last committed counter and document hash."""
        row = self.db.execute(
            "SELECT last_counter, last_hash FROM devices WHERE device_id=?", (device_id,)
        ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def segment_rows(self) -> list[tuple[str, bytes]]:
        return self.db.execute("SELECT device_id, raw FROM segments ORDER BY height").fetchall()

    # --- invoices --------------------------------------------------------------------------

    def number_holder(self, code: str, number: str) -> bytes | None:
        row = self.db.execute(
            "SELECT hash FROM invoices WHERE code=? AND number=?", (code, number)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def number_holders(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], bytes]:
        out: dict[tuple[str, str], bytes] = {}
        for start in range(0, len(keys), 400):
            chunk = keys[start : start + 400]
            marks = ",".join(["(?, ?)"] * len(chunk))
            flat = [v for key in chunk for v in key]
            # Driven from the VALUES rows, one primary-key lookup each: written as
            # "(code, number) IN (VALUES ...)" SQLite scans the whole table instead.
            for code, number, h in self.db.execute(
                f"SELECT i.code, i.number, i.hash FROM (VALUES {marks}) AS v"
                " CROSS JOIN invoices AS i ON i.code = v.column1 AND i.number = v.column2",
                flat,
            ):
                out[(code, number)] = bytes(h)
        return out

    def invoice(self, code: str, number: str) -> dict[str, Any] | None:
        cur = self.db.execute("SELECT * FROM invoices WHERE code=? AND number=?", (code, number))
        row = cur.fetchone()
        if row is None:
            return None
        return dict(zip([c[0] for c in cur.description], row, strict=True))

    def history(self, code: str, number: str) -> list[dict[str, Any]]:
        """The invoice's state history: issued, then credits and claims in order."""
        issued = self.db.execute(
            "SELECT t.height, i.issued_at, i.kind, i.total FROM invoices i"
            " JOIN txs t ON t.hash = i.hash WHERE i.code=? AND i.number=?",
            (code, number),
        ).fetchone()
        if issued is None:
            return []
        first = {
            "height": issued[0],
            "at": issued[1],
            "event": "issued",
            "kind": issued[2],
            "total": issued[3],
        }
        rows = self.db.execute(
            "SELECT height, at, event, detail FROM history WHERE code=? AND number=?"
            " ORDER BY rowid",
            (code, number),
        ).fetchall()
        return [first] + [
            {"height": h, "at": at, "event": event, **json.loads(detail)}
            for h, at, event, detail in rows
        ]

    def confirmation(self, confirmation_id: str) -> tuple[str, str, int, bool] | None:
        """(code, number, amount, used) of a committed red-letter confirmation."""
        row = self.db.execute(
            "SELECT code, number, amount, used_by IS NOT NULL FROM confirmations WHERE id=?",
            (confirmation_id,),
        ).fetchone()
        return None if row is None else (row[0], row[1], int(row[2]), bool(row[3]))

    # --- held and evidence -----------------------------------------------------------------

    def held_rows(self) -> list[tuple[bytes, str, int, bytes, str]]:
        """Every held document, oldest first (the order they expire in)."""
        return self.db.execute(
            "SELECT hash, device_id, counter, body, received_at FROM held"
            " ORDER BY received_at, device_id, counter"
        ).fetchall()

    def add_held(self, rows: Sequence[tuple[bytes, str, int, bytes, str]]) -> None:
        with self.transaction() as tx:
            tx.executemany("INSERT OR IGNORE INTO held VALUES (?, ?, ?, ?, ?)", rows)

    def add_equivocation(self, row: Sequence[Any]) -> bool:
        """Record evidence once per offending document; False if already recorded."""
        with self.transaction() as tx:
            cur = tx.execute(
                "INSERT OR IGNORE INTO equivocations (device_id, counter, code, number, rule,"
                " existing_hash, existing_body, offending_hash, offending_body, at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            return cur.rowcount == 1

    def equivocations(self, device_id: str) -> list[dict[str, Any]]:
        cur = self.db.execute(
            "SELECT id, counter, code, number, rule, existing_hash, existing_body,"
            " offending_hash, offending_body, at FROM equivocations WHERE device_id=?"
            " ORDER BY id",
            (device_id,),
        )
        names = [c[0] for c in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    # --- buyers ----------------------------------------------------------------------------

    def add_buyer(self, buyer_id: str, tax_id: str, name: str, key_hash: bytes, at: str) -> None:
        with self.transaction() as tx:
            tx.execute(
                "INSERT INTO buyers VALUES (?, ?, ?, ?, ?)", (buyer_id, tax_id, name, key_hash, at)
            )

    def buyer_by_key(self, key_hash: bytes) -> tuple[str, str, str] | None:
        row = self.db.execute(
            "SELECT buyer_id, tax_id, name FROM buyers WHERE key_hash=?", (key_hash,)
        ).fetchone()
        return None if row is None else (row[0], row[1], row[2])

    # --- enrolment codes and segment requests (the bureau's registry) --------------------

    def add_enrolment(self, row: tuple[bytes, str, str, int, int, str]) -> None:
        """(code hash, tax id, name, devices, expires at (epoch seconds), created at)."""
        with self.transaction() as tx:
            tx.execute("INSERT INTO enrolments VALUES (?, ?, ?, ?, ?, ?)", row)

    def enrolment(self, code_hash: bytes) -> tuple[str, int, int, list[str]] | None:
        """(tax id, devices, expires at, the devices that used it) of a code, by its hash."""
        row = self.db.execute(
            "SELECT tax_id, devices, expires_at FROM enrolments WHERE code_hash=?", (code_hash,)
        ).fetchone()
        if row is None:
            return None
        used = self.db.execute(
            "SELECT device_id FROM enrolment_uses WHERE code_hash=?", (code_hash,)
        ).fetchall()
        return row[0], int(row[1]), int(row[2]), [u[0] for u in used]

    def use_enrolment(self, code_hash: bytes, device_id: str) -> None:
        with self.transaction() as tx:
            tx.execute("INSERT OR IGNORE INTO enrolment_uses VALUES (?, ?)", (code_hash, device_id))

    def nonce_seen(self, nonce: bytes) -> bool:
        row = self.db.execute("SELECT 1 FROM segment_nonces WHERE nonce=?", (nonce,)).fetchone()
        return row is not None

    def add_nonce(self, nonce: bytes, device_id: str, at: int, forget_before: int) -> None:
        """Remember a segment request's nonce; those older than `forget_before` go, since
        a request that old is refused as stale anyway."""
        with self.transaction() as tx:
            tx.execute("DELETE FROM segment_nonces WHERE at < ?", (forget_before,))
            tx.execute("INSERT INTO segment_nonces VALUES (?, ?, ?)", (nonce, device_id, at))

    def highest_number(self, code: str, start: int, end: int) -> int | None:
        """The highest invoice number of `code` in start..end on the chain (a primary-key
        range: numbers are 8 zero-padded digits, so text order is number order)."""
        row = self.db.execute(
            "SELECT max(number) FROM invoices WHERE code=? AND number BETWEEN ? AND ?",
            (code, f"{start:08d}", f"{end:08d}"),
        ).fetchone()
        return None if row[0] is None else int(row[0])

    # --- taxpayers (sellers) ---------------------------------------------------------------

    def add_taxpayer_token(self, tax_id: str, token_hash: bytes) -> None:
        """Let the holder of the token whose SHA-256 is `token_hash` read `tax_id`'s ledger."""
        with self.transaction() as tx:
            tx.execute("INSERT INTO taxpayer_tokens VALUES (?, ?)", (token_hash, tax_id))

    def taxpayer_by_token(self, token_hash: bytes) -> str | None:
        """The tax id a taxpayer token reads for, or None."""
        row = self.db.execute(
            "SELECT tax_id FROM taxpayer_tokens WHERE token_hash=?", (token_hash,)
        ).fetchone()
        return None if row is None else str(row[0])


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT, rolled back if the body raises."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        if kind is None:
            self.db.execute("COMMIT")
        else:
            self.db.execute("ROLLBACK")
