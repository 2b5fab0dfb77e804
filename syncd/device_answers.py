"""A printer's HELLO, INFO and STATUS answers, checked, and the typed snapshots the link
keeps of them (`DeviceInfo`, `DeviceStatus`).

The link keeps these answers and everything else reads them: /v1/status and
the metrics (counters, backlog), the POS API (the public key a document must
verify with), registration (segments, certificate), the sync engine (the
consortium list). A printer's firmware, or whatever else answers on the port,
can put anything in a frame; so each field syncd reads is checked here for
what docs/PROTOCOL.md defines, and an answer that is not is a link fault
(`BadDeviceAnswer`, a LinkError: the link goes offline and tries again), never
a value kept and tripped over later. Pure functions, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from device.client import LinkError
from device.protocol.keys import PUBLIC_KEY_SIZE
from device.protocol.untrusted import shown

_DEVICE_ID = re.compile(r"TC[0-9A-Z]{12}")
_STATUS_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_UTC = re.compile(r"[0-9]{4,5}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
MAX_BLOCKING = 32


class BadDeviceAnswer(LinkError):
    """An answer that arrived intact but is not what the protocol defines."""


def _bad(command: str, what: str) -> BadDeviceAnswer:
    return BadDeviceAnswer(
        f"the printer's {command} answer is not what the protocol defines: {what}"
    )


def _check(
    body: dict[str, Any], command: str, key: str, ok: Callable[[Any], bool], kind: str
) -> None:
    value = body.get(key)
    if not ok(value):
        raise _bad(command, f"{key} is {shown(value)}, not {kind}")


def _count(value: Any) -> bool:
    return type(value) is int and 0 <= value < 2**63  # bool is no count


def _optional_time(value: Any) -> bool:
    return value is None or (isinstance(value, str) and _UTC.fullmatch(value) is not None)


def _optional_bytes(value: Any) -> bool:
    return value is None or isinstance(value, bytes)


def _blocking(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) <= MAX_BLOCKING
        and all(isinstance(v, str) and _STATUS_NAME.fullmatch(v) for v in value)
    )


def hello_answer(body: dict[str, Any]) -> dict[str, Any]:
    _check(body, "HELLO", "version", _count, "a protocol version")
    return body


def info_answer(body: dict[str, Any]) -> dict[str, Any]:
    command = "INFO"
    _check(
        body,
        command,
        "device_id",
        lambda v: isinstance(v, str) and _DEVICE_ID.fullmatch(v) is not None,
        "a device id (TC and 12 capitals or digits)",
    )
    _check(
        body,
        command,
        "public_key",
        lambda v: isinstance(v, bytes) and len(v) == PUBLIC_KEY_SIZE,
        f"a key of {PUBLIC_KEY_SIZE} bytes",
    )
    _check(body, command, "training", lambda v: type(v) is bool, "true or false")
    _check(body, command, "registered", lambda v: type(v) is bool, "true or false")
    _check(
        body,
        command,
        "segments",
        lambda v: isinstance(v, list) and all(isinstance(s, bytes) for s in v),
        "a list of signed segments",
    )
    _check(body, command, "certificate", _optional_bytes, "a signed certificate or null")
    _check(body, command, "consortium", _optional_bytes, "a signed node list or null")
    _check(
        body,
        command,
        "taxpayer",
        lambda v: v is None or isinstance(v, dict),
        "a taxpayer map or null",
    )
    return body


def status_answer(body: dict[str, Any]) -> dict[str, Any]:
    command = "STATUS"
    for key in ("counter", "synced_through", "numbers_left"):
        _check(body, command, key, _count, "a count")
    if body["synced_through"] > body["counter"]:
        raise _bad(command, "synced_through is past the counter")
    _check(body, command, "can_issue", lambda v: type(v) is bool, "true or false")
    _check(body, command, "blocking", _blocking, "a list of status names")
    for key in ("offline_since", "last_sync_at"):
        _check(body, command, key, _optional_time, "a UTC time or null")
    return body


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What INFO said about the printer, as the link holds it."""

    device_id: str
    public_key: bytes
    training: bool
    registered: bool
    segments: tuple[bytes, ...]
    certificate: bytes | None
    consortium: bytes | None  # the node list the device checks receipts against
    taxpayer: Mapping[str, Any] | None

    def with_consortium(self, raw: bytes) -> DeviceInfo:
        return replace(self, consortium=raw)

    def with_segment(self, raw: bytes) -> DeviceInfo:
        return replace(self, segments=(*self.segments, raw))


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """What the last STATUS said, raised by counters learned since (FETCH, ACK_SYNC, a
    segment loaded)."""

    counter: int
    synced_through: int
    numbers_left: int
    can_issue: bool
    blocking: tuple[str, ...]
    offline_since: str | None
    last_sync_at: str | None

    @property
    def pending(self) -> int:
        return max(0, self.counter - self.synced_through)

    def with_counters(self, counter: int, synced_through: int) -> DeviceStatus:
        """Counters only move forward between two STATUS answers."""
        return replace(
            self,
            counter=max(self.counter, counter),
            synced_through=max(self.synced_through, synced_through),
        )


def device_info(body: dict[str, Any]) -> DeviceInfo:
    """An INFO answer, checked, as the snapshot the link keeps."""
    info_answer(body)
    certificate, consortium = body.get("certificate"), body.get("consortium")
    return DeviceInfo(
        device_id=body["device_id"],
        public_key=body["public_key"],
        training=body["training"],
        registered=body["registered"],
        segments=tuple(body["segments"]),
        certificate=certificate,
        consortium=consortium,
        taxpayer=body.get("taxpayer"),
    )


def device_status(body: dict[str, Any]) -> DeviceStatus:
    """A STATUS answer, checked, as the snapshot the link keeps."""
    status_answer(body)
    return DeviceStatus(
        counter=body["counter"],
        synced_through=body["synced_through"],
        numbers_left=body["numbers_left"],
        can_issue=body["can_issue"],
        blocking=tuple(body["blocking"]),
        offline_since=body.get("offline_since"),
        last_sync_at=body.get("last_sync_at"),
    )
