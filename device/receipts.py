"""ACK_SYNC: checking chain receipts before anything is marked synced.

A receipt counts only if a quorum of consortium nodes (listed by the
pinned bureau key) signed a block whose Merkle root leads to the hash of
this device's own document at that counter. One valid receipt for counter
c acknowledges every document up to c (the chain admits a document only on
top of its predecessor). Any bad receipt refuses the whole request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from device.protocol import trust
from device.protocol.document import parse_utc
from device.protocol.status import DeviceError, Status
from device.protocol.untrusted import shown

if TYPE_CHECKING:
    from device.firmware import Firmware

MAX_RECEIPTS = 1000
FIELDS = {"consortium", "endorsements", "receipts"}


@dataclass(frozen=True, slots=True)
class Ack:
    synced_through: int
    consortium: bytes | None  # a consortium to store, or None
    chain_time: int | None  # the newest quorum-signed block time among the receipts
    # `consortium` as checked here (bureau signature verified): applying the ACK keeps
    # this instead of opening the same bytes again.
    opened: trust.ConsortiumKeys | None = None


def verify_ack(fw: Firmware, body: Any) -> Ack:
    """What a valid ACK_SYNC changes; raises on any bad receipt or consortium."""
    if not isinstance(body, dict) or set(body) - FIELDS:
        raise DeviceError(
            Status.BAD_REQUEST, 'ACK_SYNC takes {"consortium"?, "endorsements"?, "receipts"}'
        )
    receipts = body.get("receipts")
    if not isinstance(receipts, list) or not 1 <= len(receipts) <= MAX_RECEIPTS:
        raise DeviceError(Status.BAD_REQUEST, f"receipts must be a list of 1 to {MAX_RECEIPTS}")
    consortium = fw.credentials.consortium
    new_raw: bytes | None = None
    raw = body.get("consortium")
    if raw is not None:
        if not isinstance(raw, bytes):
            raise DeviceError(Status.BAD_REQUEST, "consortium must be bytes")
        offered = fw.credentials.check_consortium(raw, body.get("endorsements"))
        if consortium is None or offered.raw != consortium.raw:
            new_raw = raw
        consortium = offered
    if consortium is None:
        raise DeviceError(
            Status.RECEIPT_INVALID, "the device holds no consortium key list yet; send one"
        )
    headers: dict[bytes, int] = {}
    best = fw.synced_through
    newest: int | None = None
    for index, receipt in enumerate(receipts):
        _check_chain(receipt, consortium.chain_id, index)
        try:
            verified = trust.verify_receipt(receipt, consortium, headers)
        except DeviceError as exc:
            raise DeviceError(exc.status, f"receipts[{index}]: {exc.detail}") from None
        if verified.device_id != fw.settings.device_id:
            raise DeviceError(Status.RECEIPT_MISMATCH, f"receipts[{index}] is for another device")
        if verified.counter > fw.committed:
            raise DeviceError(
                Status.RECEIPT_MISMATCH, f"receipts[{index}]: no document {verified.counter}"
            )
        if fw.committed_hash(verified.counter) != verified.doc_hash:
            raise DeviceError(
                Status.RECEIPT_MISMATCH,
                f"receipts[{index}]: hash differs from document {verified.counter}",
            )
        best = max(best, verified.counter)
        block_time = _block_time(verified.time)
        if block_time is not None and (newest is None or block_time > newest):
            newest = block_time
    return Ack(best, new_raw, newest, consortium if new_raw is not None else None)


def _check_chain(receipt: object, pinned: str, index: int) -> None:
    """A receipt from another chain is refused as that chain's consortium would be."""
    header = receipt.get("header") if isinstance(receipt, dict) else None
    chain_id = header.get("chain_id") if isinstance(header, dict) else None
    if isinstance(chain_id, str) and chain_id != pinned:
        raise DeviceError(
            Status.CONSORTIUM_INVALID,
            f"receipts[{index}] is from chain {shown(chain_id)}; "
            f"the device is pinned to chain {shown(pinned)}",
        )


def _block_time(text: str) -> int | None:
    try:
        return parse_utc(text)
    except (ValueError, TypeError):
        return None  # a header time that is not UTC text moves no clock
