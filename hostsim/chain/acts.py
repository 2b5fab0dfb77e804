"""Bureau acts and buyer claims, as chain transactions.

Registering a device, allocating or recording a number segment, revoking a
device, claiming an invoice and confirming a credit of a claimed one each
become a transaction in the next block; the call returns once that block is
final. Each is idempotent where a retry is natural (the same certificate or
segment again returns the original), and refused with its own code where it
would contradict the chain (a second claim names the first).
"""

from __future__ import annotations

import secrets
from typing import Any

from device.protocol import trust
from device.protocol.document import Kind
from hostsim.chain import segreq
from hostsim.chain.engine import Engine
from hostsim.chain.enrolment import Enrolments
from hostsim.chain.errors import ChainError, Code
from hostsim.chain.rules import Confirmation, DeviceRecord
from hostsim.chain.tx import TxType, act_tx


class Acts:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.bureau = engine.bureau
        self.state = engine.state
        self.enrolments = Enrolments(engine.ledger, engine.clock)

    # --- devices ---------------------------------------------------------------------------

    async def register(
        self,
        csr: bytes | None,
        certificate: bytes | None,
        segments: list[bytes],
        wait: float,
        enrolment_code: object = None,
    ) -> dict[str, Any]:
        if (csr is None) == (certificate is None):
            raise ChainError(Code.BAD_REQUEST, "give either a csr or a certificate")
        enrolment: bytes | None = None
        if csr is not None:
            certificate, enrolment = self._certify(csr, enrolment_code)
        assert certificate is not None
        cert = self.bureau.open_certificate(certificate)
        device = self._registered_as(cert)
        new_segments = [s for s in map(self._check_segment, segments) if s is not None]
        for seg in new_segments:
            if seg.device_id != cert.device_id:
                raise ChainError(Code.BAD_SEGMENT, f"segment is for {seg.device_id}")
        if device is None:
            tx = act_tx(
                TxType.REGISTER,
                {
                    "device_id": cert.device_id,
                    "certificate": cert.raw,
                    "segments": [s.raw for s in new_segments],
                },
            )
            tx.fields["_cert"], tx.fields["_segments"] = cert, new_segments
            if enrolment is not None:  # every check passed: only now is the code used
                self.enrolments.use(enrolment, cert.device_id)
            future = self.engine.enqueue(tx)
            device = DeviceRecord(cert, 0)
            self.state.devices[cert.device_id] = device
            for seg in new_segments:
                self.state.add_segment(device, seg)
            await self.engine.wait_final(future, wait)
        else:
            for seg in new_segments:
                await self._add_segment(device, seg, wait)
        return {
            "device_id": cert.device_id,
            "certificate": cert.raw,
            "registered_height": device.registered_height,
            "segments": [s.raw for s in device.segments],
        }

    def _certify(self, csr: bytes, enrolment_code: object) -> tuple[bytes, bytes | None]:
        """(certificate, enrolment to use once registered) for a CSR: a repeated CSR gets
        the certificate already issued; a new production device needs an enrolment code."""
        request = self.bureau.check_csr(csr)
        known = self.state.devices.get(request["device_id"])
        if known is not None:
            return known.certificate.raw, None
        enrolment: bytes | None = None
        if not self.engine.training:  # training devices provision themselves
            enrolment = self.enrolments.check(
                enrolment_code, request["taxpayer"]["tax_id"], request["device_id"]
            )
        serial = len(self.state.devices) + 1
        certificate = self.bureau.certify(
            request, serial, self.engine.clock.now(), self.engine.chain_id
        )
        return certificate, enrolment

    def _registered_as(self, cert: trust.DeviceCert) -> DeviceRecord | None:
        """The device already registered with this certificate, None if it is new; refuses a
        certificate for another chain, or another certificate for a registered device."""
        if cert.chain_id is not None and cert.chain_id != self.engine.chain_id:
            raise ChainError(
                Code.BAD_CERTIFICATE,
                f"the certificate is for chain {cert.chain_id}, not {self.engine.chain_id}",
            )
        device = self.state.devices.get(cert.device_id)
        if device is not None and device.certificate.raw != cert.raw:
            raise ChainError(
                Code.ALREADY_REGISTERED,
                f"{cert.device_id} is registered with another certificate"
                f" (serial {device.certificate.serial})",
            )
        return device

    async def allocate(self, device_id: str, count: int, wait: float) -> trust.Segment:
        """A segment on a bare count: training chains only (else `allocate_signed`)."""
        if not self.engine.training:
            raise ChainError(
                Code.SIGNATURE_REQUIRED,
                "outside training a segment request must be signed by the device"
                ' (device command SEGMENT_REQUEST; send {"request": bytes})',
            )
        device = self._live_device(device_id)
        code = self.bureau.code_for(device_id)
        start = max((s.end for s in self.state.segments_by_code.get(code, [])), default=0) + 1
        raw = self.bureau.segment(device_id, code, start, count, self.engine.clock.now())
        seg = self.bureau.open_segment(raw)
        await self._add_segment(device, seg, wait)
        return seg

    async def allocate_signed(self, device_id: str, raw: bytes, wait: float) -> trust.Segment:
        """A segment for a request the device signed (SEGMENT_REQUEST): checked, capped,
        each nonce once. Every check runs before anything is recorded."""
        request = segreq.open_request(raw, device_id, self.state.devices.get(device_id))
        device = self._live_device(device_id)
        now = self.engine.clock.now()
        segreq.check_fresh(request, self.engine.ledger, now)
        if not self.engine.training:  # a training device issues itself any segment anyway
            segreq.check_cap(request, device, self.engine.ledger)
        code = self.bureau.code_for(device_id)
        start = max((s.end for s in self.state.segments_by_code.get(code, [])), default=0) + 1
        seg = self.bureau.open_segment(
            self.bureau.segment(device_id, code, start, request.count, now)
        )
        segreq.remember(request, self.engine.ledger, now)
        await self._add_segment(device, seg, wait)
        return seg

    async def record_segment(self, device_id: str, raw: bytes, wait: float) -> trust.Segment:
        device = self._live_device(device_id)
        seg = self._check_segment(raw)
        if seg is None:
            return self.bureau.open_segment(raw)
        if seg.device_id != device_id:
            raise ChainError(Code.BAD_SEGMENT, f"segment is for {seg.device_id}")
        await self._add_segment(device, seg, wait)
        return seg

    async def revoke(self, device_id: str, reason: str, wait: float) -> int:
        device = self.state.devices.get(device_id)
        if device is None:
            raise ChainError(Code.UNKNOWN_DEVICE, f"no device {device_id}")
        if device.revoked_height is not None:
            return device.revoked_height
        tx = act_tx(TxType.REVOKE, {"device_id": device_id, "reason": reason})
        future = self.engine.enqueue(tx)
        device.revoked_height, device.revoked_reason = self.engine.height + 1, reason
        height, _ = await self.engine.wait_final(future, wait)
        return height

    def _live_device(self, device_id: str) -> DeviceRecord:
        device = self.state.devices.get(device_id)
        if device is None:
            raise ChainError(Code.UNKNOWN_DEVICE, f"no device {device_id}")
        if device.revoked_height is not None:
            raise ChainError(Code.DEVICE_REVOKED, f"{device_id} is revoked")
        return device

    def _check_segment(self, raw: bytes) -> trust.Segment | None:
        """The segment if it is new; None if the chain already has this very segment."""
        seg = self.bureau.open_segment(raw)
        for other in self.state.segments_by_code.get(seg.code, []):
            if other.raw == seg.raw:
                return None
            if other.start <= seg.end and seg.start <= other.end:
                raise ChainError(
                    Code.SEGMENT_OVERLAP,
                    f"{seg.code} {seg.start}..{seg.end} overlaps {other.start}..{other.end}"
                    f" of {other.device_id}",
                )
        return seg

    async def _add_segment(self, device: DeviceRecord, seg: trust.Segment, wait: float) -> None:
        tx = act_tx(TxType.SEGMENT, {"device_id": device.device_id, "segment": seg.raw})
        tx.fields["_segment"] = seg
        future = self.engine.enqueue(tx)
        self.state.add_segment(device, seg)
        await self.engine.wait_final(future, wait)

    # --- claims ----------------------------------------------------------------------------

    async def claim(
        self, code: str, number: str, buyer_id: str, buyer_tax_id: str, wait: float
    ) -> dict[str, Any]:
        row = self.engine.ledger.invoice(code, number)
        if row is None:
            raise ChainError(Code.NOT_FOUND, f"no invoice {code}/{number} on the chain")
        if row["kind"] != Kind.INVOICE:
            raise ChainError(
                Code.NOT_CLAIMABLE, f"{code}/{number} is a {row['kind']}, not an invoice"
            )
        if row["buyer_tax_id"] != buyer_tax_id:
            raise ChainError(
                Code.NOT_THE_BUYER, f"{code}/{number} was not issued to {buyer_tax_id}"
            )
        first = row["claimed_by"] or self.state.claim_of(code, number)
        if first is not None:
            raise ChainError(
                Code.ALREADY_CLAIMED,
                f"{code}/{number} was already claimed by {first}"
                + (f" at block {row['claimed_height']}" if row["claimed_height"] else ""),
                claimed_by=first,
                claimed_height=row["claimed_height"],
            )
        credited = row["credited"] + self.state.pending_credits.get((code, number), 0)
        if credited >= row["total"]:
            raise ChainError(Code.NOT_CLAIMABLE, f"{code}/{number} is credited in full")
        tx = act_tx(
            TxType.CLAIM,
            {"code": code, "number": number, "buyer_id": buyer_id, "buyer_tax_id": buyer_tax_id},
        )
        future = self.engine.enqueue(tx)
        self.state.pending_claims[(code, number)] = buyer_id
        height, _ = await self.engine.wait_final(future, wait)
        return {"code": code, "number": number, "claimed_by": buyer_id, "height": height}

    # --- red-letter confirmations ----------------------------------------------------------

    async def confirm_credit(
        self, code: str, number: str, buyer_id: str, amount: object, wait: float
    ) -> dict[str, Any]:
        """The claiming buyer consents to a credit of up to `amount` fen of its invoice
        (红字信息确认单); the seller's credit note names the confirmation, once."""
        row = self.engine.ledger.invoice(code, number)
        if row is None:
            raise ChainError(Code.NOT_FOUND, f"no invoice {code}/{number} on the chain")
        claimed_by = row["claimed_by"] or self.state.claim_of(code, number)
        if row["kind"] != Kind.INVOICE or claimed_by is None:
            raise ChainError(
                Code.NOT_CLAIMED,
                f"{code}/{number} is not a claimed invoice; its seller credits it without"
                " a confirmation",
            )
        if claimed_by != buyer_id:
            raise ChainError(Code.NOT_THE_BUYER, f"{code}/{number} was claimed by another buyer")
        if type(amount) is not int or amount <= 0:
            raise ChainError(Code.BAD_REQUEST, "amount is the credit's size in fen, an integer > 0")
        remaining = (
            row["total"] - row["credited"] - self.state.pending_credits.get((code, number), 0)
        )
        if amount > remaining:
            raise ChainError(
                Code.CREDIT_EXCEEDS_ORIGINAL,
                f"{amount} fen is more than the {remaining} fen remaining on {code}/{number}",
            )
        confirmation_id = "RC" + secrets.token_hex(8).upper()
        fields = {
            "id": confirmation_id,
            "code": code,
            "number": number,
            "amount": amount,
            "buyer_id": buyer_id,
        }
        future = self.engine.enqueue(act_tx(TxType.CONFIRM, fields))
        self.state.pending_confirmations[confirmation_id] = Confirmation(
            confirmation_id, code, number, amount, False
        )
        await self.engine.wait_final(future, wait)
        return {"confirmation": confirmation_id, "code": code, "number": number, "amount": amount}
