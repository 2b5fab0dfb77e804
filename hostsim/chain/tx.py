"""Chain transactions: a device's signed document, or a bureau act (register, segment,
revoke) or a buyer's claim or credit confirmation. Each is a byte string whose SHA-256
is its hash and its Merkle leaf; for a document that is the hash the device chained and
the receipt names."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from device.protocol import codec
from device.protocol.document import Document


class TxType(StrEnum):
    DOCUMENT = "document"
    REGISTER = "register"
    SEGMENT = "segment"
    REVOKE = "revoke"
    CLAIM = "claim"
    CONFIRM = "confirm"  # a buyer's red-letter confirmation of a credit of a claimed invoice


@dataclass(slots=True, eq=False)
class Tx:
    hash: bytes
    type: TxType
    body: bytes
    device_id: str | None = None
    counter: int | None = None
    doc: Document | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    # (height, position) once final; `future` is made only for a transaction someone waits on
    final: tuple[int, int] | None = None
    future: asyncio.Future[tuple[int, int]] | None = None
    seq: int = 0  # place in the order the mempool received it (set when queued)

    def finality(self) -> asyncio.Future[tuple[int, int]]:
        """A future resolved with (height, position) when the transaction is final."""
        if self.future is None:
            self.future = asyncio.get_running_loop().create_future()
            if self.final is not None:
                self.future.set_result(self.final)
        return self.future


def document_tx(doc: Document) -> Tx:
    return Tx(doc.hash, TxType.DOCUMENT, doc.raw, doc.device_id, doc.counter, doc)


def act_tx(kind: TxType, fields: dict[str, Any]) -> Tx:
    body = codec.encode({"type": kind.value, **fields})
    device_id = fields.get("device_id")
    return Tx(
        hashlib.sha256(body).digest(),
        kind,
        body,
        device_id if isinstance(device_id, str) else None,
        None,
        None,
        fields,
    )


def decode_act(body: bytes) -> dict[str, Any]:
    value = codec.decode(body)
    if not isinstance(value, dict) or value.get("type") not in {t.value for t in TxType}:
        raise ValueError("not a chain transaction")
    return value
