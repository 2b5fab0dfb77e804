"""The tip: committed state from the ledger overlaid with accepted, not yet final transactions.

Devices (with their certificates, segments and hash-chain tips) are kept
in memory, since every document needs them; invoices are looked up in the
ledger and overlaid with the pending maps. Documents held ahead of a gap
are kept in memory and persisted, so a restart does not lose them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from device.protocol import trust
from device.protocol.document import (
    Document,
    DocumentError,
    Kind,
    format_utc,
    parse_document,
    parse_utc,
)
from hostsim.chain.errors import ChainError, Code
from hostsim.chain.ledger import Ledger
from hostsim.chain.rules import Confirmation, DeviceRecord, Original
from hostsim.chain.tx import Tx, TxType

Key = tuple[str, str]


@dataclass(frozen=True, slots=True)
class HeldLimits:
    """Bounds on documents held ahead of a counter gap (`taxctl hostsim chain --held-*`).

    Held documents are signed by a registered device but cannot be ordered
    yet; without bounds one device sending its counters out of order could
    fill the chain's memory and ledger. A device's sender resubmits until
    its documents are final, so a refused or expired one is sent again once
    the gap is filled."""

    per_device: int = 2_000  # two of syncd's largest batches, sent out of order
    total: int = 20_000
    max_age: float = 3_600.0  # seconds since the chain received it


HELD_LIMITS = HeldLimits()


@dataclass(frozen=True, slots=True)
class Held:
    hash: bytes
    device_id: str
    counter: int
    raw: bytes
    since: float  # when the chain received it (the injected clock)


class TipState:
    def __init__(
        self,
        ledger: Ledger,
        open_certificate: Callable[[bytes], trust.DeviceCert],
        open_segment: Callable[[bytes], trust.Segment],
        held_limits: HeldLimits = HELD_LIMITS,
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
        self.pending_confirmations: dict[str, Confirmation] = {}
        self.pending_uses: dict[str, bytes] = {}  # confirmation id -> the credit note naming it
        self.held_limits = held_limits
        # Documents ahead of a gap: by device and counter, and by hash in arrival order
        # (so the oldest is first to expire); those not yet written to the ledger.
        self.held: dict[str, dict[int, Held]] = {}
        self.held_hashes: OrderedDict[bytes, Held] = OrderedDict()
        self._new_held: dict[bytes, Held] = {}
        self._committed_numbers: dict[Key, bytes] = {}
        self._prefetched: set[Key] = set()
        # The highest committed invoice number of each segment code asked about (read once
        # from the ledger, then moved by `committed`): a number above it has no committed
        # holder. Only codes of segments on record, so a hostile batch cannot grow it.
        self._highest: dict[str, int] = {}
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
        held = self.held_hashes.get(tx_hash)
        return b"" if held is None else held.raw

    def prefetch_numbers(self, keys: list[Key]) -> None:
        """Look up a batch's numbers in one query; valid until the tip next moves. Numbers
        above their code's highest committed one are known free without it: a device's
        next invoices always are, and the query, on a read cache every block makes cold,
        cost 20 to 100 us a batch."""
        asked = [key for key in keys if not self._above_committed(key)]
        self._committed_numbers = self.ledger.number_holders(asked) if asked else {}
        self._prefetched = set(keys)

    def _above_committed(self, key: Key) -> bool:
        code, number = key
        if code not in self.segments_by_code:  # cached only for codes the chain allocated
            return False
        if len(number) != 8 or not (number.isascii() and number.isdigit()):
            return False
        highest = self._highest.get(code)
        if highest is None:
            found = self.ledger.highest_number(code, 0, 10**8 - 1)
            highest = self._highest[code] = -1 if found is None else found
        return int(number) > highest

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
        claimed = key in self.pending_claims
        if pending is not None:
            return Original(pending.kind, pending.seller_tax_id, pending.total, extra, claimed)
        row = self.ledger.invoice(code, number)
        if row is None:
            return None
        return Original(
            row["kind"],
            row["seller_tax_id"],
            row["total"],
            row["credited"] + extra,
            claimed or row["claimed_by"] is not None,
        )

    def confirmation(self, confirmation_id: str) -> Confirmation | None:
        used = confirmation_id in self.pending_uses
        pending = self.pending_confirmations.get(confirmation_id)
        if pending is not None:
            return Confirmation(pending.id, pending.code, pending.number, pending.amount, used)
        row = self.ledger.confirmation(confirmation_id)
        if row is None:
            return None
        code, number, amount, committed_use = row
        return Confirmation(confirmation_id, code, number, amount, used or committed_use)

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
            if "confirmation" in doc.payload:
                self.pending_uses[str(doc.payload["confirmation"])] = doc.hash

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
                highest = self._highest.get(doc.code)
                if highest is not None and int(doc.number) > highest:
                    self._highest[doc.code] = int(doc.number)
            if doc.kind == Kind.CREDIT:
                ref = doc.payload["refers_to"]
                key = (str(ref["code"]), str(ref["number"]))
                left = self.pending_credits.get(key, 0) + doc.total
                if left:
                    self.pending_credits[key] = left
                else:
                    self.pending_credits.pop(key, None)
                self.pending_uses.pop(str(doc.payload.get("confirmation")), None)
        elif tx.type == TxType.REGISTER:
            self.devices[str(tx.device_id)].registered_height = height
        elif tx.type == TxType.REVOKE:
            self.devices[str(tx.device_id)].revoked_height = height
        elif tx.type == TxType.CLAIM:
            self.pending_claims.pop((tx.fields["code"], tx.fields["number"]), None)
        elif tx.type == TxType.CONFIRM:
            self.pending_confirmations.pop(tx.fields["id"], None)

    # --- held documents --------------------------------------------------------------------

    def held_at(self, device_id: str, counter: int) -> Held | None:
        return self.held.get(device_id, {}).get(counter)

    def hold_refusal(self, device_id: str, missing: int) -> ChainError | None:
        """Why one more document of this device cannot be held, or None."""
        limits = self.held_limits
        count = len(self.held.get(device_id, ()))
        if count >= limits.per_device:
            return ChainError(
                Code.HELD_FULL,
                f"{device_id} already has {count} documents held behind its missing document"
                f" {missing}, the most the chain holds for one device; send {missing} first",
            )
        if len(self.held_hashes) >= limits.total:
            return ChainError(
                Code.HELD_FULL,
                f"the chain already holds {limits.total} documents behind counter gaps, its"
                f" limit; send {device_id}'s document {missing} first",
            )
        return None

    def hold(self, doc: Document, now: float) -> None:
        """Keep a document ahead of a gap (the caller checked `hold_refusal`).

        Only its bytes are kept, not the decoded payload: a few hundred bytes
        each instead of a few kilobytes; it is decoded again when released."""
        held = Held(doc.hash, doc.device_id, doc.counter, doc.raw, now)
        self.held.setdefault(doc.device_id, {})[doc.counter] = held
        self.held_hashes[doc.hash] = held
        self._new_held[doc.hash] = held

    def unhold(self, device_id: str, counter: int) -> Document | None:
        """Take the document held at this counter (its row goes when its block is written)."""
        docs = self.held.get(device_id)
        held = docs.get(counter) if docs else None
        if held is None:
            return None
        self._forget(held)
        try:
            return parse_document(held.raw)
        except DocumentError:  # it parsed when it was held: only a damaged ledger row
            self.discard_held(held.hash)
            return None

    def _forget(self, held: Held) -> None:
        docs = self.held[held.device_id]
        del docs[held.counter]
        if not docs:
            del self.held[held.device_id]
        del self.held_hashes[held.hash]
        self._new_held.pop(held.hash, None)

    def discard_held(self, tx_hash: bytes) -> None:
        with self.ledger.transaction() as db:
            db.execute("DELETE FROM held WHERE hash=?", (tx_hash,))

    def expire_held(self, now: float) -> int:
        """Drop held documents received `max_age` or more before `now`, oldest first, from
        memory and the ledger; their senders resubmit them (`held` is not final)."""
        cutoff = now - self.held_limits.max_age
        expired: list[Held] = []
        for held in self.held_hashes.values():  # in arrival order: oldest first
            if held.since > cutoff:
                break
            expired.append(held)
        for held in expired:
            self._forget(held)
        if expired:
            with self.ledger.transaction() as db:
                db.executemany("DELETE FROM held WHERE hash=?", [(h.hash,) for h in expired])
        return len(expired)

    def flush_held(self) -> None:
        if self._new_held:
            self.ledger.add_held(
                [
                    (h.hash, h.device_id, h.counter, h.raw, format_utc(h.since))
                    for h in self._new_held.values()
                ]
            )
            self._new_held.clear()

    def load_held(self) -> None:
        for tx_hash, device_id, counter, body, received_at in self.ledger.held_rows():
            try:
                since = float(parse_utc(received_at))
            except ValueError:
                since = 0.0  # unreadable: the first to expire
            held = Held(bytes(tx_hash), device_id, counter, bytes(body), since)
            self.held.setdefault(device_id, {})[counter] = held
            self.held_hashes[held.hash] = held

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
