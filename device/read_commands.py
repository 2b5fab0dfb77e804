"""Commands that read the device's state and change nothing durable.

HELLO, INFO, STATUS, FETCH, GET_DOCUMENT, EXPORT, CSR and SEGMENT_REQUEST answer from the
committed journal and the in-memory head; CONTROL flips the emulated
paper and cover switches.
"""

from __future__ import annotations

import secrets
from typing import Any

from device.firmware import Firmware, response_for_row
from device.limits import amount_exceeded, time_exceeded
from device.protocol import framing, invoice, trust
from device.protocol.commands import FETCH_MAX_BYTES, FETCH_MAX_COUNT
from device.protocol.document import format_utc
from device.protocol.status import DeviceError, Status
from device.protocol.untrusted import shown, shown_keys
from device.settings import FIRMWARE

SUPPORTED_VERSIONS = (framing.PROTOCOL_VERSION,)


def _map(body: Any, allowed: set[str], command: str) -> dict[str, Any]:
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise DeviceError(Status.BAD_REQUEST, f"{command} takes a map")
    unknown = set(body) - allowed
    if unknown:
        raise DeviceError(Status.BAD_REQUEST, f"{command}: unknown fields {shown_keys(unknown)}")
    return body


def _int(body: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = body.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise DeviceError(Status.BAD_REQUEST, f"{key} must be an integer in [{low}, {high}]")
    return value


def hello(fw: Firmware, body: Any) -> dict[str, Any]:
    body = _map(body, {"versions", "host"}, "HELLO")
    versions = body.get("versions")
    if not isinstance(versions, list) or not versions:
        raise DeviceError(Status.BAD_REQUEST, "HELLO needs a list of protocol versions")
    common = [v for v in SUPPORTED_VERSIONS if v in versions]
    if not common:
        raise DeviceError(
            Status.UNSUPPORTED_VERSION,
            f"host speaks {shown(versions)}, device {list(SUPPORTED_VERSIONS)}",
        )
    return {
        "version": max(common),
        "device_id": fw.settings.device_id,
        "firmware": FIRMWARE,
        "max_body": framing.MAX_BODY,
        "max_in_flight": fw.max_in_flight,
        "training": fw.settings.training,
    }


def info(fw: Firmware, body: Any) -> dict[str, Any]:
    _map(body, set(), "INFO")
    reg = fw.credentials
    return {
        "device_id": fw.settings.device_id,
        "firmware": FIRMWARE,
        "protocol": framing.PROTOCOL_VERSION,
        "public_key": fw.key.public_key,
        "bureau_key": fw.settings.bureau_key,
        "training": fw.settings.training,
        "registered": reg.cert is not None,
        "taxpayer": reg.cert.taxpayer if reg.cert else None,
        "certificate": reg.cert.raw if reg.cert else None,
        "segments": reg.live_segments(),
        "consortium": reg.consortium.raw if reg.consortium else None,
        "capacity": {"documents": fw.settings.capacity, "used": fw.head.counter},
        "tax_rates": sorted(fw.settings.tax_rates),
        "limits": {
            "offline_seconds": fw.settings.limits.offline_seconds,
            "offline_amount": fw.settings.limits.offline_amount,
        },
    }


def status(fw: Firmware, body: Any) -> dict[str, Any]:
    _map(body, set(), "STATUS")
    now = fw.now()
    blocking = fw.blocking()
    limits = fw.settings.limits
    return {
        "can_issue": not blocking,
        "blocking": blocking,
        "flags": {
            "registered": fw.credentials.cert is not None,
            "paper_out": fw.paper_out,
            "cover_open": fw.cover_open,
            "storage_full": fw.head.counter >= fw.settings.capacity,
            "offline_time_exceeded": time_exceeded(limits, fw.backlog, now),
            "offline_amount_exceeded": amount_exceeded(limits, fw.backlog, 1),
            "clock_backwards": now < fw.head.last_time,
        },
        "counter": fw.head.counter,
        "last_hash": fw.head.last_hash,
        "synced_through": fw.synced_through,
        "unsynced_count": fw.backlog.count,
        "unsynced_amount": fw.backlog.amount,
        "offline_since": format_utc(fw.backlog.oldest_at) if fw.backlog.oldest_at else None,
        "last_sync_at": format_utc(fw.last_sync_at) if fw.last_sync_at else None,
        "numbers_left": fw.credentials.numbers_left(),
        "time": format_utc(now),
        "day": {
            "z_count": fw.period.z_number - 1,
            "documents": fw.period.documents,
            "total": fw.period.amount + fw.period.tax,
        },
        "since_start": fw.since_start.to_body(),
    }


def fetch(fw: Firmware, body: Any) -> dict[str, Any]:
    body = _map(body, {"from", "max_count", "max_bytes"}, "FETCH")
    start = max(_int(body, "from", 1, 1, 2**62), fw.synced_through + 1)
    max_count = _int(body, "max_count", FETCH_MAX_COUNT, 1, FETCH_MAX_COUNT)
    max_bytes = _int(body, "max_bytes", FETCH_MAX_BYTES, 1, FETCH_MAX_BYTES)
    docs = fw.journal.documents(start, last=fw.committed, max_count=max_count, max_bytes=max_bytes)
    return {
        "documents": [doc for _, doc in docs],
        "first": docs[0][0] if docs else min(start, fw.committed + 1),
        "last_counter": fw.committed,
        "synced_through": fw.synced_through,
    }


def export(fw: Firmware, body: Any) -> dict[str, Any]:
    body = _map(body, {"from", "to", "max_bytes"}, "EXPORT")
    first = _int(body, "from", 1, 1, 2**62)
    last = _int(body, "to", fw.committed, first, 2**62) if "to" in body else fw.committed
    max_bytes = _int(body, "max_bytes", FETCH_MAX_BYTES, 1, FETCH_MAX_BYTES)
    if first > fw.committed + 1:
        raise DeviceError(Status.RANGE_INVALID, f"from {first} is past the last document")
    docs = fw.journal.documents(
        first, last=min(last, fw.committed), max_count=FETCH_MAX_COUNT, max_bytes=max_bytes
    )
    nxt = docs[-1][0] + 1 if docs else first
    return {
        "documents": [doc for _, doc in docs],
        "first": first,
        "next": nxt if nxt <= min(last, fw.committed) else None,
    }


def get_document(fw: Firmware, body: Any) -> dict[str, Any]:
    body = _map(body, {"counter", "code", "number"}, "GET_DOCUMENT")
    if "counter" in body:
        row = fw.journal.document(_int(body, "counter", 1, 1, 2**62))
    elif invoice.is_invoice_code(body.get("code")) and invoice.is_invoice_number(
        body.get("number")
    ):
        row = fw.journal.document_by_number(body["code"], body["number"])
    else:
        raise DeviceError(Status.BAD_REQUEST, "GET_DOCUMENT takes a counter or a code and number")
    if row is None:
        raise DeviceError(Status.RANGE_INVALID, "no such document")
    response = response_for_row(row, fw.key)
    response["synced"] = row.counter <= fw.synced_through
    return response


def csr(fw: Firmware, body: Any) -> dict[str, Any]:
    body = _map(body, {"taxpayer"}, "CSR")
    if fw.settings.training:
        raise DeviceError(Status.TRAINING_MODE, "a training device provisions itself")
    if fw.credentials.cert is not None:
        raise DeviceError(Status.ALREADY_REGISTERED)
    taxpayer = invoice.parse_party(body.get("taxpayer"), "taxpayer", tax_id_required=True)
    assert taxpayer is not None
    raw = trust.make_csr(fw.key, taxpayer, False, fw.now())
    return {"device_id": fw.settings.device_id, "csr": raw}


def segment_request(fw: Firmware, body: Any) -> dict[str, Any]:
    """Sign a request for numbers: the chain allocates a segment only on the word of the
    certified device key. A fresh nonce each time, so nothing durable changes."""
    body = _map(body, {"count"}, "SEGMENT_REQUEST")
    if fw.credentials.cert is None:
        raise DeviceError(Status.UNREGISTERED, "a segment request needs the device certificate")
    if "count" not in body:
        raise DeviceError(Status.BAD_REQUEST, "SEGMENT_REQUEST needs a count")
    count = _int(body, "count", 1, 1, trust.SEGMENT_REQUEST_MAX)
    nonce = secrets.token_bytes(trust.SEGMENT_NONCE_SIZE)
    raw = trust.make_segment_request(fw.key, fw.settings.device_id, count, fw.now(), nonce)
    return {"request": raw}


def control(fw: Firmware, body: Any) -> dict[str, Any]:
    body = _map(body, {"paper_out", "cover_open"}, "CONTROL")
    for key in ("paper_out", "cover_open"):
        if key in body and not isinstance(body[key], bool):
            raise DeviceError(Status.BAD_REQUEST, f"{key} must be true or false")
    fw.paper_out = body.get("paper_out", fw.paper_out)
    fw.cover_open = body.get("cover_open", fw.cover_open)
    return {"paper_out": fw.paper_out, "cover_open": fw.cover_open}
