"""Checking a device's signed segment request (device command SEGMENT_REQUEST).

Outside training the chain allocates invoice numbers only on the word of a
registered, unrevoked device's certified key, for that device, within the
caps, and once per nonce (nonces are kept in the ledger, so a replay is
refused after a restart too; they are forgotten once a request that old
would be refused as stale anyway).
"""

from __future__ import annotations

from dataclasses import dataclass

from device.protocol import codec, cose, trust, untrusted
from device.protocol.document import parse_utc
from device.protocol.untrusted import shown
from hostsim.chain.errors import ChainError, Code
from hostsim.chain.ledger import Ledger
from hostsim.chain.rules import DeviceRecord

MAX_COUNT = trust.SEGMENT_REQUEST_MAX  # numbers one request may ask for
MAX_OUTSTANDING = 200_000  # a device's allocated numbers not yet used on the chain
STALE_AFTER = 86_400  # seconds between the request's `at` and the chain's time
REQUEST_KEYS = frozenset({"type", "device_id", "count", "at", "nonce"})


@dataclass(frozen=True, slots=True)
class SegmentRequest:
    device_id: str
    count: int
    at: int
    nonce: bytes


def _payload(raw: bytes) -> tuple[cose.Sign1, dict[str, object]]:
    try:
        envelope = cose.decode_sign1(raw)
        payload = codec.decode_canonical(envelope.payload, untrusted.CBOR_BODY)
    except (cose.CoseError, codec.CodecError) as exc:
        raise ChainError(Code.BAD_REQUEST, f"request: {exc}") from None
    if not isinstance(payload, dict) or payload.get("type") != "segment_request":
        raise ChainError(Code.BAD_REQUEST, "request is not a segment_request")
    if set(payload) != REQUEST_KEYS:
        raise ChainError(Code.BAD_REQUEST, f"request fields must be {sorted(REQUEST_KEYS)}")
    return envelope, payload


def open_request(raw: bytes, device_id: str, device: DeviceRecord | None) -> SegmentRequest:
    """The request for `device_id` (the URL's), signed by that device's certified key."""
    envelope, p = _payload(raw)
    if device is None:
        raise ChainError(Code.UNKNOWN_DEVICE, f"no device {device_id}")
    if device.revoked_height is not None:
        raise ChainError(Code.DEVICE_REVOKED, f"{device_id} is revoked")
    if envelope.kid != device_id.encode() or not envelope.verify(device.certificate.public_key):
        raise ChainError(Code.BAD_SIGNATURE, f"the request is not signed by {device_id}'s key")
    if p["device_id"] != device_id:
        raise ChainError(Code.BAD_SIGNATURE, f"the request is for {shown(p['device_id'])}")
    count, nonce = p["count"], p["nonce"]
    if type(count) is not int or count < 1:
        raise ChainError(Code.BAD_REQUEST, "count must be a positive integer")
    if count > MAX_COUNT:
        raise ChainError(
            Code.SEGMENT_TOO_LARGE, f"one request gets at most {MAX_COUNT} numbers, not {count}"
        )
    if not isinstance(nonce, bytes) or len(nonce) != trust.SEGMENT_NONCE_SIZE:
        raise ChainError(Code.BAD_REQUEST, f"nonce must be {trust.SEGMENT_NONCE_SIZE} bytes")
    try:
        at = parse_utc(p["at"])
    except ValueError:
        raise ChainError(Code.BAD_REQUEST, "at must be a UTC time YYYY-MM-DDTHH:MM:SSZ") from None
    return SegmentRequest(device_id, count, at, nonce)


def check_fresh(request: SegmentRequest, ledger: Ledger, now: float) -> None:
    if abs(request.at - now) > STALE_AFTER:
        raise ChainError(
            Code.REQUEST_STALE,
            "the request's time is more than a day from the chain's; set the device clock"
            " and ask again",
        )
    if ledger.nonce_seen(request.nonce):
        raise ChainError(Code.REQUEST_REPLAYED, "this segment request was already used")


def check_cap(request: SegmentRequest, device: DeviceRecord, ledger: Ledger) -> None:
    unused = 0
    for seg in device.segments:
        used = ledger.highest_number(seg.code, seg.start, seg.end)
        unused += seg.end - (seg.start - 1 if used is None else used)
    if unused + request.count > MAX_OUTSTANDING:
        raise ChainError(
            Code.SEGMENT_CAP,
            f"{request.device_id} still has {unused} unused numbers; at most"
            f" {MAX_OUTSTANDING} may be outstanding",
        )


def remember(request: SegmentRequest, ledger: Ledger, now: float) -> None:
    forget_before = int(now) - 2 * STALE_AFTER
    ledger.add_nonce(request.nonce, request.device_id, request.at, forget_before)
