"""ACK_SYNC: checking chain receipts before anything is marked synced.

A receipt counts only if a quorum of consortium nodes (listed by the
pinned bureau key) signed a block whose Merkle root leads to the hash of
this device's own document at that counter. One valid receipt for counter
c acknowledges every document up to c (the chain admits a document only on
top of its predecessor). Any bad receipt refuses the whole request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from device.protocol import trust
from device.protocol.status import DeviceError, Status

if TYPE_CHECKING:
    from device.firmware import Firmware

MAX_RECEIPTS = 1000


def verify_ack(fw: Firmware, body: Any) -> tuple[int, bytes | None]:
    """(new synced_through, consortium bytes to store or None); raises on any bad receipt."""
    if not isinstance(body, dict) or set(body) - {"consortium", "receipts"}:
        raise DeviceError(Status.BAD_REQUEST, 'ACK_SYNC takes {"consortium"?, "receipts"}')
    receipts = body.get("receipts")
    if not isinstance(receipts, list) or not 1 <= len(receipts) <= MAX_RECEIPTS:
        raise DeviceError(Status.BAD_REQUEST, f"receipts must be a list of 1 to {MAX_RECEIPTS}")
    consortium = fw.registry.consortium
    new_raw: bytes | None = None
    raw = body.get("consortium")
    if raw is not None:
        if not isinstance(raw, bytes):
            raise DeviceError(Status.BAD_REQUEST, "consortium must be bytes")
        offered = fw.registry.check_consortium(raw)
        if consortium is None or offered.raw != consortium.raw:
            new_raw = raw
        consortium = offered
    if consortium is None:
        raise DeviceError(
            Status.RECEIPT_INVALID, "the device holds no consortium key list yet; send one"
        )
    headers: dict[bytes, int] = {}
    best = fw.synced_through
    for index, receipt in enumerate(receipts):
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
        if fw.journal.hash_of(verified.counter) != verified.doc_hash:
            raise DeviceError(
                Status.RECEIPT_MISMATCH,
                f"receipts[{index}]: hash differs from document {verified.counter}",
            )
        best = max(best, verified.counter)
    return best, new_raw
