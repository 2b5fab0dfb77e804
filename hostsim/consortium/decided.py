"""Bureau acts decided once: by a node holding the bureau's key, before the log.

Certifying a CSR, granting a segment for a signed request and issuing an
enrolment code each need the bureau's signature. If every node carried them
out when the log reached them, every node would need the bureau's key. So the
node that holds it (the bureau's node; outside training no other) decides the
act against its tip, signs the result — the certificate, the segment, the
enrolment record — and logs the *result*. Every node then applies that result
after checking the bureau's signature and re-checking, at the log position,
what the log order decides (an enrolment code's remaining uses, a request's
nonce, an overlapping segment), so the outcome is the same everywhere. A
request reaching a node without the key is forwarded to the bureau's node
(`forward.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from device.protocol import codec
from device.protocol.keys import KeyPair, verify
from hostsim.chain import segreq
from hostsim.chain.acts import Acts
from hostsim.chain.enrolment import EnrolmentRow, Issued
from hostsim.chain.errors import ChainError, Code

if TYPE_CHECKING:
    from hostsim.consortium.acts import ConsortiumActs

ENROLMENT_DOMAIN = b"taxctl/enrolment/v1\x00"


def certify(acts: ConsortiumActs, csr: bytes, enrolment_code: object) -> tuple[bytes, Any]:
    """On the bureau's node: (certificate, the hash of the enrolment code it uses or None)."""
    certificate, digest = acts._certify(csr, enrolment_code)
    return certificate, digest


def grant(acts: ConsortiumActs, device_id: str, raw: bytes) -> bytes:
    """On the bureau's node: a segment for a signed request, checked against its tip; the
    numbers it hands out are reserved here until the log applies them."""
    state, engine = acts.state, acts.engine
    request = segreq.open_request(raw, device_id, state.devices.get(device_id))
    device = acts._live_device(device_id)
    now = engine.clock.now()
    segreq.check_fresh(request, engine.ledger, now)
    if not engine.training:
        segreq.check_cap(request, device, engine.ledger)
    code = acts.bureau.code_for(device_id)
    taken = max((s.end for s in state.segments_by_code.get(code, [])), default=0)
    start = max(taken, acts.reserved.get(code, 0)) + 1
    segment = acts.bureau.segment(device_id, code, start, request.count, now)
    acts.reserved[code] = start + request.count - 1
    return segment


def enrolment(acts: ConsortiumActs, body: dict[str, Any]) -> tuple[Issued, dict[str, Any]]:
    """On the bureau's node: a new code, and the signed record every node keeps."""
    issued, row, token_hash = acts.enrolments.new(body)
    record = codec.encode({"row": list(row), "token_hash": token_hash})
    signature = acts.bureau.key.sign(ENROLMENT_DOMAIN + record)
    return issued, {"record": record, "signature": signature}


# --- what every node applies --------------------------------------------------------------


async def apply_register(acts: ConsortiumActs, a: dict[str, Any]) -> Any:
    """A registration with the bureau's certificate; the enrolment code it names is
    checked and used here, at the log position, so two uses of a one-device code end
    alike everywhere."""
    if a.get("csr") is not None:
        raise ChainError(
            Code.BAD_REQUEST, "a logged registration carries the bureau's certificate, not a CSR"
        )
    cert = acts.bureau.open_certificate(a["certificate"])
    digest = a.get("enrolment")
    new = cert.device_id not in acts.state.devices
    if digest is not None and new:
        if not isinstance(digest, bytes):
            raise TypeError("enrolment is a code hash")
        acts.enrolments.check_digest(digest, cert.taxpayer["tax_id"], cert.device_id)
    out = await Acts.register(acts, None, cert.raw, list(a["segments"]), 0, None)
    if digest is not None and new:
        acts.enrolments.use(digest, cert.device_id)
    return out


async def apply_grant(acts: ConsortiumActs, device_id: str, raw: bytes, seg_raw: bytes) -> Any:
    """A bureau-signed segment for a device's signed request: the request checked again
    (its nonce once, on every node), the segment against the chain's others."""
    engine = acts.engine
    request = segreq.open_request(raw, device_id, acts.state.devices.get(device_id))
    device = acts._live_device(device_id)
    now = engine.clock.now()
    seg = acts.bureau.open_segment(seg_raw)
    if seg.device_id != device_id or seg.size != request.count:
        raise ChainError(Code.BAD_SEGMENT, "the granted segment does not answer the request")
    segreq.check_fresh(request, engine.ledger, now)
    if not engine.training:
        segreq.check_cap(request, device, engine.ledger)
    if acts._check_segment(seg.raw) is None:
        return seg
    segreq.remember(request, engine.ledger, now)
    await acts._add_segment(device, seg, 0)
    return seg


def apply_enrolment(acts: ConsortiumActs, record: bytes, signature: bytes) -> dict[str, Any]:
    """Keep a bureau-signed enrolment record (its code's hash, never the code)."""
    if not verify(acts.bureau.public_key, ENROLMENT_DOMAIN + record, signature):
        raise ChainError(Code.BAD_REQUEST, "the enrolment record is not signed by the bureau")
    value = codec.decode(record)
    row, token_hash = value.get("row"), value.get("token_hash")
    if not (isinstance(row, list) and len(row) == 6 and isinstance(token_hash, bytes)):
        raise ValueError("an enrolment record is a row and a token hash")
    digest, tax_id, name, devices, expires_at, created = row
    if not (
        isinstance(digest, bytes)
        and isinstance(tax_id, str)
        and isinstance(name, str)
        and type(devices) is int
        and type(expires_at) is int
        and isinstance(created, str)
    ):
        raise ValueError("an enrolment row is malformed")
    typed: EnrolmentRow = (digest, tax_id, name, devices, expires_at, created)
    acts.enrolments.record(typed, token_hash)
    return {"tax_id": tax_id}


def signs_for_bureau(acts: ConsortiumActs) -> bool:
    """Whether this node holds the bureau's signing key (an enterprise node holds only
    the public key, in another type)."""
    return isinstance(acts.bureau.key, KeyPair)
