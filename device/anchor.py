"""The anchor: the device's signed record of how far its journal has gone.

A real fiscal drive keeps its last counter in write-once memory apart from
the journal. Here a small file beside the journal plays that role: after
each committed group it holds `{counter, last_hash}` of the newest document,
signed by the device key (so it cannot be edited by hand unnoticed). A
journal behind it — its WAL lost after a crash, or an older copy restored —
is caught at start, and the device then refuses to sign (JOURNAL_ROLLED_BACK).

The file has two slots of one page each, written alternately in place and
fdatasync'd: one fsync per group, no rename and no directory fsync. A write
torn by a power cut damages only the slot being written (its signature no
longer verifies); the other still holds the group before, whose answers had
not been sent yet. On reading, the valid slot with the higher counter wins.
An anchor that only restores an older copy together with the journal cannot
be caught by the device alone; syncd and the chain catch that (PROTOCOL.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from device.protocol import codec, cose
from device.protocol.keys import KeyPair

ANCHOR_FILE = "anchor"
SLOT = 4096  # one page per slot: a torn write stays within the slot being written
KID = b"anchor"


class AnchorDamaged(Exception):
    """Neither slot of the anchor file holds an anchor this device signed."""


@dataclass(frozen=True, slots=True)
class Mark:
    counter: int
    last_hash: bytes


def _encode(key: KeyPair, mark: Mark) -> bytes:
    signed = cose.sign1(
        codec.encode({"type": "anchor", "counter": mark.counter, "last_hash": mark.last_hash}),
        key,
        KID,
    )
    slot = len(signed).to_bytes(2, "big") + signed
    assert len(slot) <= SLOT
    return slot + bytes(SLOT - len(slot))


def _decode(slot: bytes, public_key: bytes) -> Mark | None:
    size = int.from_bytes(slot[:2], "big")
    if not 0 < size <= SLOT - 2:
        return None
    try:
        envelope = cose.decode_sign1(slot[2 : 2 + size])
        payload = codec.decode_canonical(envelope.payload)
    except (cose.CoseError, codec.CodecError):
        return None
    if not isinstance(payload, dict) or payload.get("type") != "anchor":
        return None
    counter, last_hash = payload.get("counter"), payload.get("last_hash")
    if type(counter) is not int or counter < 0 or not isinstance(last_hash, bytes):
        return None
    return Mark(counter, last_hash) if envelope.verify(public_key) else None


class Anchor:
    """The anchor file of one state directory; written only from the journal thread."""

    def __init__(self, state: Path, key: KeyPair) -> None:
        self.path = state / ANCHOR_FILE
        self.key = key
        self._fd: int | None = None
        self._next_slot = 0

    def read(self) -> Mark | None:
        """The newest valid mark; None if there is no anchor file. Raises AnchorDamaged."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        marks = [
            (m, i)
            for i in range(2)
            if (m := _decode(data[i * SLOT : (i + 1) * SLOT], self.key.public_key)) is not None
        ]
        if not marks:
            raise AnchorDamaged(f"{self.path} holds no anchor signed by this device")
        mark, slot = max(marks, key=lambda pair: pair[0].counter)
        self._next_slot = 1 - slot
        return mark

    def create(self, mark: Mark) -> None:
        """A new anchor file holding `mark` in both slots, atomically (temp file, rename)."""
        tmp = self.path.with_name(ANCHOR_FILE + ".new")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, _encode(self.key, mark) * 2)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._next_slot = 0

    def advance(self, mark: Mark) -> None:
        """Record `mark` durably in the older slot (one fdatasync)."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY)
        os.pwrite(self._fd, _encode(self.key, mark), self._next_slot * SLOT)
        os.fdatasync(self._fd)
        self._next_slot = 1 - self._next_slot

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
