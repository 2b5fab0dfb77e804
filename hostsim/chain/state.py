"""The tip: committed state from the ledger overlaid with accepted, not yet final transactions.

Devices (with their certificates, segments and hash-chain tips) are kept
in memory, since every document needs them; invoices are looked up in the
ledger and overlaid with the pending maps. Documents held ahead of a gap
are kept in memory and persisted, so a restart does not lose them.
"""

from __future__ import annotations

from collections.abc import Callable

from device.protocol import trust
from device.protocol.document import Document, DocumentError, Kind, format_utc, parse_document
from hostsim.chain.ledger import Ledger
from hostsim.chain.rules import DeviceRecord, Original
from hostsim.chain.tx import Tx, TxType

Key = tuple[str, str]


class TipState:
    def __init__(
        self,
        ledger: Ledger,
        open_certificate: Callable[[bytes], trust.DeviceCert],
        open_segment: Callable[[bytes], trust.Segment],
    ) -> None:
        self.ledger = ledger
        self.devices: dict[str, DeviceRecord] = {}
        self.segments_by_code: dict[str, list[trust.Segment]] = {}
        self.pending: dict[bytes, Tx] = {}
        self.pending_by_counter: dict[tuple[str, int], bytes] = {}
        self.pending_numbers: dict[Key, bytes] = {}
        self.pending_invoices: dict[Key, Original] = {}
        self.pending_credits: dict[Key, int] = {}
        self.pending_claims: dict[Key, str] = {}
        self.held: dict[str, dict[int, Document]] = {}
        self.held_hashes: set[bytes] = set()
        self._new_held: list[tuple[bytes, str, int, bytes]] = []
        self._committed_numbers: dict[Key, bytes] = {}
        self._prefetched: set[Key] = set()
        for row in ledger.device_rows():
            device_id, cert_raw, height, revoked, reason, last, last_hash, last_at = row
            self.devices[device_id] = DeviceRecord(
                open_certificate(bytes(cert_raw)),
                height,
                [],
                revoked,
                reason,
                last,
                bytes(last_hash),
                last_at,
            )
        for device_id, raw in ledger.segment_rows():
            self.add_segment(self.devices[device_id], open_segment(bytes(raw)))

    # --- lookups ---------------------------------------------------------------------------

    def hash_at(self, device_id: str, counter: int) -> bytes | None:
        pending = self.pending_by_counter.get((device_id, counter))
        if pending is not None:
            return pending
        row = self.ledger.device_tx(device_id, counter)
        return None if row is None else row.hash

    def body_of(self, tx_hash: bytes) -> bytes:
        tx = self.pending.get(tx_hash)
        if tx is not None:
            return tx.body
        row = self.ledger.tx(tx_hash)
        if row is not None:
            return row.body
        for docs in self.held.values():
            for doc in docs.values():
                if doc.hash == tx_hash:
                    return doc.raw
        return b""

    def prefetch_numbers(self, keys: list[Key]) -> None:
        """Look up a batch's numbers in one query; valid until the tip next moves."""
        self._committed_numbers = self.ledger.number_holders(keys) if keys else {}
        self._prefetched = set(keys)

    def number_holder(self, code: str, number: str) -> bytes | None:
        key = (code, number)
        pending = self.pending_numbers.get(key)
        if pending is not None:
            return pending
        if key in self._prefetched:
            return self._committed_numbers.get(key)
        return self.ledger.number_holder(code, number)

    def original(self, code: str, number: str) -> Original | None:
        key = (code, number)
        extra = self.pending_credits.get(key, 0)
        pending = self.pending_invoices.get(key)
        if pending is not None:
            return Original(pending.kind, pending.seller_tax_id, pending.total, extra)
        row = self.ledger.invoice(code, number)
        if row is None:
            return None
        return Original(row["kind"], row["seller_tax_id"], row["total"], row["credited"] + extra)

    def claim_of(self, code: str, number: str) -> str | None:
        return self.pending_claims.get((code, number))

    # --- accepting -------------------------------------------------------------------------

    def add_segment(self, device: DeviceRecord, seg: trust.Segment) -> None:
        device.segments.append(seg)
        self.segments_by_code.setdefault(seg.code, []).append(seg)

    def accept_document(self, tx: Tx, device: DeviceRecord) -> None:
        doc = tx.doc
        assert doc is not None
        self.pending[tx.hash] = tx
        self.pending_by_counter[(doc.device_id, doc.counter)] = doc.hash
        device.last_counter, device.last_hash = doc.counter, doc.hash
        device.last_issued_at = str(doc.payload["issued_at"])
        if doc.code is None or doc.number is None:
            return
        key = (doc.code, doc.number)
        self.pending_numbers[key] = doc.hash
        self.pending_invoices[key] = Original(
            doc.kind.value, str(doc.payload["seller"].get("tax_id")), doc.total, 0
        )
        if doc.kind == Kind.CREDIT:
            ref = doc.payload["refers_to"]
            ref_key = (str(ref["code"]), str(ref["number"]))
            self.pending_credits[ref_key] = self.pending_credits.get(ref_key, 0) - doc.total

    def committed(self, tx: Tx, height: int) -> None:
        """Drop a now-final transaction from the overlay (the ledger has it)."""
        self.pending.pop(tx.hash, None)
        if tx.type == TxType.DOCUMENT:
            doc = tx.doc
            assert doc is not None
            self.pending_by_counter.pop((doc.device_id, doc.counter), None)
            if doc.code is not None and doc.number is not None:
                self.pending_numbers.pop((doc.code, doc.number), None)
                self.pending_invoices.pop((doc.code, doc.number), None)
            if doc.kind == Kind.CREDIT:
                ref = doc.payload["refers_to"]
                key = (str(ref["code"]), str(ref["number"]))
                left = self.pending_credits.get(key, 0) + doc.total
                if left:
                    self.pending_credits[key] = left
                else:
                    self.pending_credits.pop(key, None)
        elif tx.type == TxType.REGISTER:
            self.devices[str(tx.device_id)].registered_height = height
        elif tx.type == TxType.REVOKE:
            self.devices[str(tx.device_id)].revoked_height = height
        elif tx.type == TxType.CLAIM:
            self.pending_claims.pop((tx.fields["code"], tx.fields["number"]), None)

    # --- held documents --------------------------------------------------------------------

    def held_at(self, device_id: str, counter: int) -> Document | None:
        return self.held.get(device_id, {}).get(counter)

    def hold(self, doc: Document) -> None:
        self.held.setdefault(doc.device_id, {})[doc.counter] = doc
        self.held_hashes.add(doc.hash)
        self._new_held.append((doc.hash, doc.device_id, doc.counter, doc.raw))

    def unhold(self, device_id: str, counter: int) -> Document | None:
        """Take the document held at this counter (its row goes when its block is written)."""
        docs = self.held.get(device_id)
        doc = docs.pop(counter, None) if docs else None
        if doc is not None:
            self.held_hashes.discard(doc.hash)
            self._new_held = [r for r in self._new_held if r[0] != doc.hash]
        return doc

    def discard_held(self, tx_hash: bytes) -> None:
        with self.ledger.transaction() as db:
            db.execute("DELETE FROM held WHERE hash=?", (tx_hash,))

    def flush_held(self, now: float) -> None:
        if self._new_held:
            at = format_utc(now)
            self.ledger.add_held([(*row, at) for row in self._new_held])
            self._new_held.clear()

    def load_held(self) -> list[str]:
        for tx_hash, device_id, counter, body in self.ledger.held_rows():
            try:
                doc = parse_document(bytes(body))
            except DocumentError:
                continue
            self.held.setdefault(device_id, {})[counter] = doc
            self.held_hashes.add(bytes(tx_hash))
        return list(self.held)

    def held_count(self) -> int:
        return len(self.held_hashes)

    # --- evidence --------------------------------------------------------------------------

    def record_equivocation(
        self, doc: Document, existing: bytes | None, rule: str, now: float
    ) -> None:
        existing_hash = existing or b""
        self.ledger.add_equivocation(
            (
                doc.device_id,
                doc.counter,
                doc.code,
                doc.number,
                rule,
                existing_hash,
                self.body_of(existing_hash) if existing else b"",
                doc.hash,
                doc.raw,
                format_utc(now),
            )
        )
