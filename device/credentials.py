"""What the tax bureau gave this device: certificate, number segments, consortium keys.

Everything is checked against the one pinned bureau key before it is
accepted. A training device provisions itself at personalisation with the
well-known training bureau key (docs/PROTOCOL.md §7).
"""

from __future__ import annotations

from dataclasses import dataclass

from device.journal import Journal, SegmentRow
from device.protocol import invoice, taxid, trust
from device.protocol.keys import KeyPair
from device.protocol.status import DeviceError, Status
from device.protocol.untrusted import shown
from device.settings import Settings

TRAINING_TAXPAYER = {"tax_id": taxid.make("914403000000TRN01"), "name": "Training Taxpayer"}
TRAINING_SEGMENT_SIZE = 1_000_000
TRAINING_CERT_YEARS = 10


@dataclass(slots=True)
class NumberSlot:
    segment_id: int
    code: str
    number: int

    @property
    def text(self) -> str:
        return f"{self.number:08d}"


class Credentials:
    def __init__(self, settings: Settings, key: KeyPair, journal: Journal) -> None:
        self.settings = settings
        self.key = key
        self.journal = journal
        raw_cert = journal.meta("certificate")
        self.cert = (
            trust.open_certificate(raw_cert, settings.bureau_key) if raw_cert is not None else None
        )
        raw_consortium = journal.meta("consortium")
        self.consortium = (
            trust.open_consortium(raw_consortium, settings.bureau_key)
            if raw_consortium is not None
            else None
        )
        self.segments: list[SegmentRow] = journal.segments()
        self.next_number: dict[int, int] = {s.id: s.next for s in self.segments}
        # The chain this device is bound to when its certificate names none (training, or a
        # certificate from before chain ids): the first consortium it accepted.
        self.first_chain_id: str | None = journal.meta("chain_id")

    @property
    def chain_id(self) -> str | None:
        """The one chain whose consortia and receipts this device accepts (None: not yet)."""
        if self.cert is not None and self.cert.chain_id is not None:
            return self.cert.chain_id
        if self.first_chain_id is not None:
            return self.first_chain_id
        return self.consortium.chain_id if self.consortium is not None else None

    # --- numbers -------------------------------------------------------------------------

    def numbers_left(self) -> int:
        return sum(max(0, s.end - self.next_number[s.id] + 1) for s in self.segments)

    def take_number(self) -> NumberSlot:
        """The next unused number, in segment order; advances the in-memory cursor."""
        for segment in self.segments:
            nxt = self.next_number[segment.id]
            if nxt <= segment.end:
                self.next_number[segment.id] = nxt + 1
                return NumberSlot(segment.id, segment.code, nxt)
        raise DeviceError(Status.SEGMENT_EXHAUSTED)

    def peek_available(self) -> None:
        # Per document: stop at the first segment with a number left instead of
        # counting what all of them hold.
        if not any(self.next_number[s.id] <= s.end for s in self.segments):
            raise DeviceError(Status.SEGMENT_EXHAUSTED)

    def live_segments(self) -> list[bytes]:
        return [s.raw for s in self.segments if self.next_number[s.id] <= s.end]

    # --- certificate ---------------------------------------------------------------------

    def check_certificate(self, raw: bytes) -> trust.DeviceCert:
        cert = trust.open_certificate(raw, self.settings.bureau_key)
        if cert.device_id != self.settings.device_id or cert.public_key != self.key.public_key:
            raise DeviceError(Status.CERT_INVALID, "certificate is for another device or key")
        if cert.training != self.settings.training:
            raise DeviceError(Status.CERT_INVALID, "certificate training flag does not match")
        if taxid.problem(cert.taxpayer["tax_id"]) is not None:
            raise DeviceError(Status.CERT_INVALID, "certificate taxpayer tax id is invalid")
        try:  # the seller's name is printed on every receipt: the same rules as any name
            invoice.check_text(cert.taxpayer["name"], "certificate taxpayer name")
        except DeviceError as exc:
            raise DeviceError(Status.CERT_INVALID, exc.detail) from None
        if self.cert is not None and self.cert.raw != raw:
            raise DeviceError(Status.ALREADY_REGISTERED)
        return cert

    def check_segment(self, raw: bytes) -> trust.Segment | None:
        """A new segment to add, or None if exactly this one is already loaded."""
        if any(s.raw == raw for s in self.segments):
            return None
        seg = trust.open_segment(raw, self.settings.bureau_key)
        if seg.device_id != self.settings.device_id:
            raise DeviceError(Status.SEGMENT_INVALID, "segment is for another device")
        if seg.training != self.settings.training:
            raise DeviceError(Status.SEGMENT_INVALID, "segment training flag does not match")
        for old in self.segments:
            if old.code == seg.code and old.start <= seg.end and seg.start <= old.end:
                raise DeviceError(
                    Status.SEGMENT_INVALID,
                    f"overlaps loaded segment {old.code} {old.start}..{old.end}",
                )
        return seg

    def add_segment(self, row: SegmentRow) -> None:
        self.segments.append(row)
        self.next_number[row.id] = row.next

    def check_consortium(self, raw: bytes, endorsements: object = None) -> trust.ConsortiumKeys:
        """A consortium this device may hold: bureau-signed, of its chain, and either the one
        held, or the next epoch endorsed by the held one's quorum (the lineage)."""
        consortium = trust.open_consortium(raw, self.settings.bureau_key)
        if consortium.training != self.settings.training:
            raise DeviceError(Status.CONSORTIUM_INVALID, "consortium training flag does not match")
        pinned = self.chain_id
        if pinned is not None and consortium.chain_id != pinned:
            raise DeviceError(
                Status.CONSORTIUM_INVALID,
                f"the device is pinned to chain {shown(pinned)}; "
                f"this consortium is for chain {shown(consortium.chain_id)}",
            )
        held = self.consortium
        if held is None or raw == held.raw:
            return consortium
        if consortium.epoch < held.epoch:
            raise DeviceError(
                Status.CONSORTIUM_INVALID,
                f"epoch {consortium.epoch} is older than the held {held.epoch}",
            )
        if consortium.epoch == held.epoch:
            raise DeviceError(
                Status.CONSORTIUM_INVALID,
                f"a different consortium for the held epoch {held.epoch}",
            )
        if consortium.epoch != held.epoch + 1:
            raise DeviceError(
                Status.CONSORTIUM_INVALID,
                f"epoch {consortium.epoch} skips from the held {held.epoch}: rotate one at a time",
            )
        trust.check_rotation(raw, endorsements, held)
        return consortium

    # --- training self-provisioning ------------------------------------------------------

    def provision_training(self, now: float) -> None:
        """Give a fresh training device a certificate and a segment, signed with the
        well-known training bureau key (never valid outside training)."""
        assert (
            self.settings.training and self.settings.bureau_key == trust.TRAINING_BUREAU.public_key
        )
        if self.cert is None:
            csr = trust.open_csr(trust.make_csr(self.key, TRAINING_TAXPAYER, True, now))
            raw = trust.issue_certificate(trust.TRAINING_BUREAU, csr, 1, now, TRAINING_CERT_YEARS)
            self.cert = self.check_certificate(raw)
            self.journal.set_meta("certificate", raw)
        if not self.segments:
            code = trust.training_segment_code(self.settings.device_id)
            raw = trust.issue_segment(
                trust.TRAINING_BUREAU,
                self.settings.device_id,
                code,
                1,
                TRAINING_SEGMENT_SIZE,
                True,
                now,
            )
            seg = self.check_segment(raw)
            assert seg is not None
            self.add_segment(self.journal.add_segment(seg.code, seg.start, seg.end, seg.raw))
