"""The device's behaviour: what each command does to its state. No serial I/O.

Issuing commands build documents on top of an in-memory head (counter,
previous hash, number cursor, backlog, day totals) so that a whole batch
can be signed before one journal commit. `snapshot()` before a batch and
`restore()` if the commit fails put every tentative change back: a refusal
or a failed write changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from device import checks, receipts
from device.anchor import Anchor, AnchorDamaged, Mark
from device.counters import RunCounts
from device.credentials import Credentials
from device.journal import Batch, DocumentRow, Journal, SegmentRow
from device.limits import Backlog, is_offline
from device.protocol import codec, cose, invoice, qr, trust
from device.protocol.clock import Clock
from device.protocol.commands import DEFAULT_MAX_IN_FLIGHT
from device.protocol.document import (
    ZERO_HASH,
    Kind,
    document_hash,
    format_utc,
    parse_utc,
    sign_document,
)
from device.protocol.keys import KeyPair
from device.protocol.status import DeviceError, Status
from device.reports import Period
from device.settings import Settings
from device.statelock import StateLock

log = logging.getLogger("taxctl.device")

LATEST_TEXT = "9999-01-01T00:00:00Z"
LATEST_TIME = parse_utc(LATEST_TEXT)  # SET_TIME's bound: a year of four-digit dates left


@dataclass(slots=True)
class Head:
    counter: int = 0
    last_hash: bytes = ZERO_HASH
    last_time: int = 0


@dataclass(frozen=True, slots=True)
class Write:
    """A checked write command: what to make durable, then what follows in memory.

    `store` runs in the journal thread (None: nothing to write) and `finish` after it,
    with what `store` returned: it changes the in-memory state and gives the answer.
    Every check runs before `store` and only assignments in `finish`, so a refusal or a
    failed write changes nothing.

    `meta` is set when `store` writes only journal meta (None stored): such a write may
    instead ride in the transaction of the document batch before it (the writer joins
    an ACK_SYNC to the group it follows), one fsync for both.
    """

    store: Callable[[], Any] | None
    finish: Callable[[Any], dict[str, Any]]
    meta: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    head: Head
    numbers: dict[int, int]
    backlog: Backlog
    period: Period


def signed_qr(row: DocumentRow, payload: dict[str, Any], key: KeyPair) -> str | None:
    """The receipt's QR payload with the device's signature (offline 查验); None for a
    report. Ed25519 is deterministic, so a reprint gets the same text."""
    if row.code is None:
        return None
    query = qr.for_document(payload)
    return qr.sign_qr(query, row.hash, payload["device_id"], key).to_payload()


def document_response(row: DocumentRow, payload: dict[str, Any], key: KeyPair) -> dict[str, Any]:
    """The DocumentResponse body; built only from the stored document, so a
    retransmission after a restart gets the same bytes."""
    # Keys in deterministic order, so encode_ordered gives the canonical bytes.
    return {
        "qr": signed_qr(row, payload, key),
        "code": row.code,
        "kind": row.kind,
        "total": row.total,
        "number": row.number,
        "counter": row.counter,
        "document": row.doc,
        "training": payload["training"],
        "issued_at": payload["issued_at"],
        "check_code": payload["check_code"],
    }


def pending_backlog(rows: list[DocumentRow]) -> Backlog:
    """The backlog of documents not yet committed: what journal.range_totals counts
    (every document; the |total| of invoices and credit notes) over these rows."""
    money = (Kind.INVOICE.value, Kind.CREDIT.value)
    amount = sum(abs(row.total) for row in rows if row.kind in money)
    return Backlog(len(rows), amount, rows[0].issued_at if rows else None)


def response_payload(row: DocumentRow) -> dict[str, Any]:
    payload = codec.decode(cose.decode_sign1(row.doc).payload)
    assert isinstance(payload, dict)
    return payload


def response_for_row(row: DocumentRow, key: KeyPair) -> dict[str, Any]:
    return document_response(row, response_payload(row), key)


class Firmware:
    def __init__(
        self, settings: Settings, key: KeyPair, journal: Journal, clock: Clock, state: Path
    ) -> None:
        self.settings = settings
        self.key = key
        self.journal = journal
        self.clock = clock
        self.state = state
        self.credentials = Credentials(settings, key, journal)
        last = journal.last_document()
        self.head = Head(*last) if last else Head()
        self.committed = self.head.counter
        self._committed_hash = self.head.last_hash  # of document `committed`
        self.synced_through: int = journal.meta("synced_through", 0)
        self.last_sync_at: int | None = journal.meta("last_sync_at")
        self.time_offset: int = journal.meta("time_offset", 0)
        # The newest quorum-signed block time seen in a verified receipt (trusted time).
        self.chain_time: int = journal.meta("chain_time", 0)
        count, amount = journal.range_totals(self.synced_through)
        self.backlog = Backlog(count, amount, journal.issued_at(self.synced_through + 1))
        self.period = Period.from_record(journal.meta("period"))
        self.request_marks = journal.request_marks()
        self.paper_out = False
        self.cover_open = False
        # Requests the link may have in flight: HELLO says so, the server enforces it.
        self.max_in_flight = DEFAULT_MAX_IN_FLIGHT
        self.since_start = RunCounts()  # this process's link and commit counts (STATUS)
        self.state_lock: StateLock | None = None  # set by app.open_device
        self._pending: list[DocumentRow] = []
        self._pending_payloads: dict[tuple[str, str], dict[str, Any]] = {}
        self.anchor = Anchor(state, key)
        self.rolled_back: str | None = self._check_anchor()  # why signing is refused, or None

    def close(self) -> None:
        """Close the journal and let another process open this state."""
        self.anchor.close()
        self.journal.close()
        if self.state_lock is not None:
            self.state_lock.release()
            self.state_lock = None

    # --- the anchor ----------------------------------------------------------------------

    def _check_anchor(self) -> str | None:
        """Why the journal is behind the anchor, or None. A missing anchor is made from the
        journal (a new device, or one from before anchors)."""
        try:
            mark = self.anchor.read()
        except AnchorDamaged as exc:
            return str(exc)
        if mark is None:
            self.anchor.create(Mark(self.head.counter, self.head.last_hash))
            return None
        if self.head.counter < mark.counter:
            return (
                f"the journal ends at counter {self.head.counter}, "
                f"the anchor says {mark.counter} were issued"
            )
        if mark.counter and self.journal.hash_of(mark.counter) != mark.last_hash:
            return f"document {mark.counter} in the journal differs from the anchor's"
        return None

    def commit_documents(self, batch: Batch) -> None:
        """In the journal thread: commit a group, then move the anchor to its last document
        before anything is answered. A failed anchor write is logged, not fatal: the group
        is durable in the journal and the next group writes the anchor again."""
        self.journal.commit(batch)
        if batch.documents:
            last = batch.documents[-1]
            try:
                self.anchor.advance(Mark(last.counter, last.hash))
            except OSError as exc:
                log.error("cannot write the anchor after counter %d: %s", last.counter, exc)

    # --- clock -------------------------------------------------------------------------

    def now(self) -> int:
        return int(self.clock.now()) + self.time_offset

    # --- batches -------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        return Snapshot(
            self.head, dict(self.credentials.next_number), self.backlog, self.period.copy()
        )

    def restore(self, snap: Snapshot) -> None:
        self.head = snap.head
        self.credentials.next_number = snap.numbers
        self.backlog = snap.backlog
        self.period = snap.period
        self._pending.clear()
        self._pending_payloads.clear()

    def take_batch(self) -> Batch:
        rows, self._pending = self._pending, []
        self._pending_payloads.clear()
        marks = self.request_marks
        for row in rows:
            if row.request_id is not None:
                # Raised before the commit (the journal raises its own in the same
                # statement): if the commit fails, the mark is only too high, which
                # costs a journal lookup, never a missed replay.
                prefix, low = row.request_id >> 32, row.request_id & 0xFFFFFFFF
                if low > marks.get(prefix, -1):
                    marks[prefix] = low
        return Batch(documents=rows, period=self.period.to_record() if rows else None)

    def maybe_issued(self, request_id: int) -> bool:
        """False only if no document was ever journaled under this request id.

        Hosts count request ids up from a random prefix, so a fresh request's
        low half is above the mark for its prefix and needs no journal lookup.
        """
        high = self.request_marks.get(request_id >> 32)
        return high is not None and request_id & 0xFFFFFFFF <= high

    def committed_batch(self, batch: Batch) -> None:
        if batch.documents:
            last = batch.documents[-1]
            self.committed, self._committed_hash = last.counter, last.hash
            self.since_start.committed(len(batch.documents))

    def committed_hash(self, counter: int) -> bytes | None:
        """The hash of committed document `counter` (None: no such document). The newest,
        which a receipt usually names, is known without reading the journal."""
        if counter == self.committed and counter > 0:
            return self._committed_hash
        return self.journal.hash_of(counter) if 0 < counter < self.committed else None

    def commit_pending(self) -> Batch:
        """Commit what was issued since the last batch, as the writer's group commit does
        but in the caller's thread (tools, benches, fixtures with no server); the batch."""
        batch = self.take_batch()
        if batch:
            self.commit_documents(batch)
            self.committed_batch(batch)
        return batch

    def carry_out(self, write: Write) -> dict[str, Any]:
        """A write command's `store` and `finish` in the caller's thread (no server)."""
        return write.finish(None if write.store is None else write.store())

    # --- issuing -------------------------------------------------------------------------

    def _sign(
        self,
        kind: Kind,
        now: int,
        *,
        number: tuple[str, str] | None,
        buyer: dict[str, str] | None,
        items: list[dict[str, Any]],
        amount: int,
        tax: int,
        extra: dict[str, Any],
        request: tuple[int, bytes] | None,
        refers: tuple[str, str] | None = None,
    ) -> dict[str, Any]:
        assert self.credentials.cert is not None
        counter = self.head.counter + 1
        fields: dict[str, Any] = {
            "device_id": self.settings.device_id,
            "counter": counter,
            "code": number[0] if number else None,
            "number": number[1] if number else None,
            "kind": kind.value,
            "issued_at": format_utc(now),
            "seller": self.credentials.cert.taxpayer,
            "buyer": buyer,
            "items": items,
            "amount": amount,
            "tax": tax,
            "total": amount + tax,
            "prev_hash": self.head.last_hash,
            "offline": is_offline(self.settings.limits, self.backlog, now),
            "training": self.settings.training,
            **extra,
        }
        raw, payload = sign_document(self.key, fields)
        digest = document_hash(raw)
        row = DocumentRow(
            counter,
            kind.value,
            fields["code"],
            fields["number"],
            now,
            amount + tax,
            digest,
            raw,
            request[0] if request else None,
            request[1] if request else None,
            refers[0] if refers else None,
            refers[1] if refers else None,
        )
        self._add_pending(kind, row, payload, number, items)
        return document_response(row, payload, self.key)

    def _add_pending(
        self,
        kind: Kind,
        row: DocumentRow,
        payload: dict[str, Any],
        number: tuple[str, str] | None,
        items: list[dict[str, Any]],
    ) -> None:
        """A signed document joins the batch: the head, the backlog and the period move."""
        self._pending.append(row)
        if number is not None:
            self._pending_payloads[number] = payload
        self.head = Head(row.counter, row.hash, row.issued_at)
        if kind in (Kind.INVOICE, Kind.CREDIT):
            self.backlog = self.backlog.add(row.total, row.issued_at)
        elif self.backlog.oldest_at is None:
            self.backlog = replace(
                self.backlog, count=self.backlog.count + 1, oldest_at=row.issued_at
            )
        else:
            self.backlog = replace(self.backlog, count=self.backlog.count + 1)
        self.period.add(kind, items)

    def issue(self, body: Any, request: tuple[int, bytes] | None = None) -> dict[str, Any]:
        if self.credentials.cert is None:
            raise DeviceError(Status.UNREGISTERED)
        req = invoice.parse_invoice_request(body, self.settings.tax_rates)
        now = self.now()
        checks.check_document(self, now)
        totals = invoice.totals(req.lines)
        checks.check_numbered(self, now, totals.total)
        slot = self.credentials.take_number()
        return self._sign(
            Kind.INVOICE,
            now,
            number=(slot.code, slot.text),
            buyer=req.buyer,
            items=[line.to_payload() for line in req.lines],
            amount=totals.amount,
            tax=totals.tax,
            extra={},
            request=request,
        )

    def _original(self, code: str, number: str) -> tuple[str, int, dict[str, Any] | None]:
        """(kind, total, payload-if-pending) of an earlier document by number."""
        payload = self._pending_payloads.get((code, number))
        if payload is not None:
            return payload["kind"], payload["total"], payload
        row = self.journal.document_by_number(code, number)
        if row is None:
            raise DeviceError(Status.CREDIT_UNKNOWN_ORIGINAL, f"{code}/{number}")
        return row.kind, row.total, None

    def _credited(self, code: str, number: str) -> int:
        pending = sum(
            -r.total for r in self._pending if (r.refers_code, r.refers_number) == (code, number)
        )
        return self.journal.credited(code, number) + pending

    def credit(self, body: Any, request: tuple[int, bytes] | None = None) -> dict[str, Any]:
        if self.credentials.cert is None:
            raise DeviceError(Status.UNREGISTERED)
        req = invoice.parse_credit_request(body, self.settings.tax_rates)
        kind, original_total, payload = self._original(req.code, req.number)
        if kind != Kind.INVOICE:
            raise DeviceError(Status.CREDIT_NOT_AN_INVOICE, f"{req.code}/{req.number} is a {kind}")
        credited = self._credited(req.code, req.number)
        if req.lines is None:
            if credited:
                raise DeviceError(
                    Status.CREDIT_EXCEEDS_ORIGINAL,
                    "a full credit is only possible while nothing of the original is credited",
                )
            if payload is None:
                row = self.journal.document_by_number(req.code, req.number)
                assert row is not None
                payload = response_payload(row)
            lines = [
                invoice.make_line(
                    it["name"],
                    -invoice.parse_quantity(it["quantity"]),
                    it["unit_price"],
                    it["tax_rate_bp"],
                )
                for it in payload["items"]
            ]
        else:
            lines = req.lines
        totals = invoice.totals(lines)
        if -totals.total > original_total - credited:
            raise DeviceError(
                Status.CREDIT_EXCEEDS_ORIGINAL,
                f"credit {-totals.total} fen, remaining {original_total - credited} fen",
            )
        now = self.now()
        checks.check_document(self, now)
        checks.check_numbered(self, now, totals.total)
        slot = self.credentials.take_number()
        extra: dict[str, Any] = {
            "refers_to": {"code": req.code, "number": req.number},
            "reason": req.reason,
        }
        if req.confirmation is not None:  # absent, not null, when not given
            extra["confirmation"] = req.confirmation
        return self._sign(
            Kind.CREDIT,
            now,
            number=(slot.code, slot.text),
            buyer=None,
            items=[line.to_payload() for line in lines],
            amount=totals.amount,
            tax=totals.tax,
            extra=extra,
            request=request,
            refers=(req.code, req.number),
        )

    def report(self, kind: Kind, request: tuple[int, bytes] | None = None) -> dict[str, Any]:
        now = self.now()
        checks.check_document(self, now)  # reports are allowed past the offline limits
        period = self.period
        report = period.report()
        response = self._sign(
            kind,
            now,
            number=None,
            buyer=None,
            items=[],
            amount=period.amount,
            tax=period.tax,
            extra={"report": report},
            request=request,
        )
        if kind == Kind.Z_REPORT:
            self.period = period.closed(self.head.counter + 1)
        return response

    # --- state reports -------------------------------------------------------------------

    def blocking(self) -> list[str]:
        """Why an invoice would be refused now (STATUS), from the checks issuing runs."""
        return checks.blocking(self, self.now())

    # --- synchronisation and registration -----------------------------------------------

    def ack_sync(self, body: Any) -> Write:
        """ACK_SYNC: verified chain receipts move synced_through (and maybe the consortium
        and the trusted time)."""
        ack = receipts.verify_ack(self, body)
        now = self.now()
        meta = self.ack_meta(ack, now)
        accepted = len(body["receipts"])

        def finish(_: None) -> dict[str, Any]:
            if meta:
                self.apply_ack(ack, meta, now)
                log.info("%s synced through %d", self.settings.device_id, self.synced_through)
            return {
                "synced_through": self.synced_through,
                "accepted": accepted,
                "last_sync_at": format_utc(self.last_sync_at) if self.last_sync_at else None,
                "time": format_utc(self.now()),
            }

        if not meta:
            return Write(None, finish, {})
        return Write(partial(self.journal.commit, Batch(meta=meta)), finish, meta)

    def load_cert(self, body: Any) -> Write:
        """LOAD_CERT: the bureau's certificate for this device and key (again: a no-op)."""
        raw = _bytes_field(body, "certificate")
        cert = self.credentials.check_certificate(raw)
        new = self.credentials.cert is None

        def finish(_: None) -> dict[str, Any]:
            if new:
                self.credentials.cert = cert
                log.info("%s registered to %s", self.settings.device_id, cert.taxpayer["tax_id"])
            return {"device_id": cert.device_id, "taxpayer": cert.taxpayer, "serial": cert.serial}

        store = partial(self.journal.commit, Batch(meta={"certificate": raw})) if new else None
        return Write(store, finish)

    def load_segment(self, body: Any) -> Write:
        """LOAD_SEGMENT: a bureau-signed range of invoice numbers (again: a no-op)."""
        raw = _bytes_field(body, "segment")
        segment = self.credentials.check_segment(raw)

        def finish(row: SegmentRow | None) -> dict[str, Any]:
            if row is not None:
                self.credentials.add_segment(row)
            loaded = next(s for s in self.credentials.segments if s.raw == raw)
            return {
                "code": loaded.code,
                "start": loaded.start,
                "end": loaded.end,
                "numbers_left": self.credentials.numbers_left(),
            }

        if segment is None:
            return Write(None, finish)
        add = partial(
            self.journal.add_segment, segment.code, segment.start, segment.end, segment.raw
        )
        return Write(add, finish)

    def ack_meta(self, ack: receipts.Ack, now: int) -> dict[str, Any]:
        """The journal meta an ACK_SYNC changes (empty: nothing to write)."""
        meta: dict[str, Any] = {}
        if ack.synced_through > self.synced_through:
            meta.update(synced_through=ack.synced_through, last_sync_at=now)
        if ack.consortium is not None:
            meta["consortium"] = ack.consortium
            if self.credentials.chain_id is None:  # the first consortium pins the chain
                meta["chain_id"] = self._opened(ack).chain_id
        if ack.chain_time is not None and ack.chain_time > self.chain_time:
            meta["chain_time"] = ack.chain_time
            offset = self.offset_for_chain_time(ack.chain_time)
            if offset is not None:
                meta["time_offset"] = offset
        return meta

    def offset_for_chain_time(self, chain_time: int) -> int | None:
        """The clock offset that brings device time up to a trusted block time: never
        backwards, never past the certificate's not_after; None if it does not move."""
        target = chain_time
        not_after = self.not_after()
        if not_after is not None:
            target = min(target, not_after)
        if target <= self.now():
            return None
        return target - int(self.clock.now())

    def not_after(self) -> int | None:
        cert = self.credentials.cert
        return parse_utc(cert.not_after) if cert is not None else None

    def _opened(self, ack: receipts.Ack) -> trust.ConsortiumKeys:
        """The ACK's new consortium, as verify_ack checked it (opened again only if an
        Ack made elsewhere did not keep it)."""
        assert ack.consortium is not None
        if ack.opened is not None and ack.opened.raw == ack.consortium:
            return ack.opened
        return trust.open_consortium(ack.consortium, self.settings.bureau_key)

    def apply_ack(self, ack: receipts.Ack, meta: dict[str, Any], now: int) -> None:
        """After the commit of `meta`: the same changes in memory."""
        synced_through = ack.synced_through
        if ack.consortium is not None:
            self.credentials.consortium = self._opened(ack)
            if "chain_id" in meta:
                self.credentials.first_chain_id = meta["chain_id"]
        if "chain_time" in meta:
            self.chain_time = meta["chain_time"]
        if "time_offset" in meta:
            self.time_offset = meta["time_offset"]
        if synced_through > self.synced_through:
            self.backlog = self._backlog_after(synced_through)
            self.synced_through = synced_through
            self.last_sync_at = now

    def _backlog_after(self, synced_through: int) -> Backlog:
        """The backlog once everything through `synced_through` is synced. A receipt for
        the newest committed document (syncd's usual one) leaves only the documents not
        yet committed, all in memory: no journal read."""
        if synced_through == self.committed:
            return pending_backlog(self._pending)
        count, amount = self.journal.range_totals(self.synced_through, synced_through)
        oldest = self.journal.issued_at(synced_through + 1)
        if oldest is None and self._pending:
            oldest = self._pending[0].issued_at
        return Backlog(self.backlog.count - count, self.backlog.amount - amount, oldest)

    def set_time(self, body: Any) -> Write:
        """SET_TIME: move the clock forward, within the step and the certificate."""
        offset = self._offset_for(body)

        def finish(_: None) -> dict[str, Any]:
            self.time_offset = offset
            return {"time": format_utc(self.now())}

        return Write(partial(self.journal.commit, Batch(meta={"time_offset": offset})), finish)

    def _offset_for(self, body: Any) -> int:
        """The clock offset a SET_TIME body asks for, or its refusal."""
        if not isinstance(body, dict) or set(body) != {"time"}:
            raise DeviceError(Status.BAD_REQUEST, 'SET_TIME takes {"time": "YYYY-MM-DDTHH:MM:SSZ"}')
        try:
            wanted = parse_utc(body["time"])
        except ValueError as exc:
            raise DeviceError(Status.BAD_REQUEST, str(exc)) from None
        if wanted >= LATEST_TIME:
            # The clock can never be set back: a time near the end of four-digit years would
            # soon date every document in a five-digit year, a form nothing reads.
            raise DeviceError(Status.BAD_REQUEST, f"the time must be before {LATEST_TEXT}")
        now = self.now()
        if wanted < now or wanted < self.head.last_time:
            raise DeviceError(
                Status.CLOCK_BACKWARDS, f"{body['time']} is before device time {format_utc(now)}"
            )
        not_after = self.not_after()
        if not_after is not None and wanted > not_after:
            raise DeviceError(
                Status.CLOCK_STEP_REFUSED,
                f"{body['time']} is past the certificate's not_after {format_utc(not_after)}",
            )
        base = max(now, self.chain_time)
        step = self.settings.max_clock_step
        if wanted - base > step:
            raise DeviceError(
                Status.CLOCK_STEP_REFUSED,
                f"{body['time']} is more than {step} s ahead of {format_utc(base)}; "
                "a larger step comes only with a chain receipt (ACK_SYNC)",
            )
        return wanted - int(self.clock.now())


def _bytes_field(body: Any, key: str) -> bytes:
    if not isinstance(body, dict) or set(body) != {key} or not isinstance(body[key], bytes):
        raise DeviceError(Status.BAD_REQUEST, f'takes {{"{key}": bytes}}')
    return bytes(body[key])
