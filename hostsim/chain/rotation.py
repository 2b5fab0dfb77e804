"""Consortium rotation: the bureau issues epoch + 1, the current nodes endorse it.

A device moves to a new epoch only with the endorsements of the held
epoch's quorum (device/protocol/trust.py `check_rotation`), so the chain
hands them out with the consortium (`GET /v1/consortium`). The nodes run in
this process, so each endorses with its own key here, before any key is
replaced: a rotation can replace node keys (`replace`), and the old keys
are discarded only once the new epoch and its endorsements are recorded.

The ledger keeps every epoch with the height of the first block it signs
(`EPOCHS_META`), so `chain verify` checks each block against the keys in
force at its height. Blocks are never re-signed in the ledger; a receipt
for a block older than the current epoch is re-attested by the current
nodes when it is handed out (`blocks.BlockCache`), so a device needs only
the consortium it holds, and keys that were replaced sign nothing it accepts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from device.protocol import codec, trust, untrusted
from hostsim.chain.errors import ChainError, Code
from hostsim.chain.quorum import NodeSet

if TYPE_CHECKING:
    from hostsim.chain.ledger import Ledger
    from hostsim.chain.node import Chain

ENDORSEMENTS_META = "consortium_endorsements"
EPOCHS_META = "consortium_epochs"


@dataclass(frozen=True, slots=True)
class Epoch:
    """One consortium on record: its bytes, the previous quorum's endorsements, and the
    height of the first block its nodes sign."""

    consortium: bytes
    endorsements: list[dict[str, Any]]
    from_height: int

    def record(self) -> dict[str, Any]:
        return {
            "consortium": self.consortium,
            "endorsements": self.endorsements,
            "from_height": self.from_height,
        }


def load_endorsements(raw: bytes | None) -> list[dict[str, Any]]:
    value = codec.decode(raw) if raw else []
    return value if isinstance(value, list) else []


def load_epochs(ledger: Ledger) -> list[Epoch]:
    """Every epoch on record, oldest first. A ledger from before this record holds only
    its current consortium, in force from the first block (its keys never changed).
    Raises ValueError for a record that is not a list of epochs."""
    raw = ledger.get_meta(EPOCHS_META)
    if raw is None:
        current = ledger.get_meta("consortium")
        if current is None:
            return []
        endorsements = load_endorsements(ledger.get_meta(ENDORSEMENTS_META))
        return [Epoch(current, endorsements, 1)]
    try:
        value = codec.decode(raw, untrusted.CHAIN_ANSWER)
    except codec.CodecError as exc:
        raise ValueError(f"the epoch record does not decode: {exc}") from None
    if not isinstance(value, list):
        raise ValueError("the epoch record is not a list")
    epochs: list[Epoch] = []
    for entry in value:
        if not isinstance(entry, dict):
            raise ValueError("an epoch record entry is not a map")
        consortium, signed = entry.get("consortium"), entry.get("endorsements")
        height = entry.get("from_height")
        if not (
            isinstance(consortium, bytes)
            and isinstance(signed, list)
            and type(height) is int
            and height >= 1
        ):
            raise ValueError("an epoch record entry is malformed")
        epochs.append(Epoch(consortium, signed, height))
    return epochs


def replaced_ids(chain: Chain, replace: object) -> list[str]:
    """`replace` from the request: None, "all", or a list of node ids of this chain."""
    if replace is None:
        return []
    if replace == "all":
        return sorted(chain.nodes.keys)
    if not isinstance(replace, list) or not all(isinstance(n, str) for n in replace):
        raise ChainError(Code.BAD_REQUEST, 'replace must be "all" or a list of node ids')
    unknown = [n for n in replace if n not in chain.nodes.keys]
    if unknown:
        raise ChainError(Code.BAD_REQUEST, f"no such node: {untrusted.shown(unknown[0])}")
    return sorted(set(replace))


async def rotate(chain: Chain, replace: Sequence[str] = ()) -> trust.ConsortiumKeys:
    """Issue and record the next epoch, endorsed by the current quorum's reachable nodes;
    the nodes in `replace` get fresh keys, which sign from the next block on."""
    engine = chain.engine
    async with engine.cut_lock:  # no block is being signed or written meanwhile
        current = trust.open_consortium(chain.consortium, chain.bureau.public_key)
        reachable = chain.nodes.available()
        if len(reachable) < current.quorum:
            raise ChainError(
                Code.UNAVAILABLE,
                f"{len(reachable)} nodes reachable, {current.quorum} must endorse a rotation",
            )
        keys = chain.nodes.replace(replace)
        public = {node_id: key.public_key for node_id, key in keys.items()}
        new_raw = trust.issue_consortium(
            chain.bureau.key,
            chain.chain_id,
            current.epoch + 1,
            public,
            chain.training,
            engine.clock.now(),
        )
        # The current (old) keys endorse, before any of them is discarded.
        endorsements = [
            {"node_id": n, "signature": trust.sign_rotation(chain.nodes.keys[n], new_raw)}
            for n in sorted(reachable)
        ]
        epochs = load_epochs(chain.ledger)
        epochs.append(Epoch(new_raw, endorsements, engine.height + 1))
        if replace:
            NodeSet.stage(chain.directory, keys)
        with chain.ledger.transaction():
            chain.ledger.set_meta("consortium", new_raw)
            chain.ledger.set_meta(ENDORSEMENTS_META, codec.encode(endorsements))
            chain.ledger.set_meta(EPOCHS_META, codec.encode([e.record() for e in epochs]))
        if replace:
            NodeSet.promote(chain.directory)
        chain.nodes.keys = keys
        chain.consortium, chain.endorsements = new_raw, endorsements
        engine.blocks.attest_from(engine.height + 1)
    return trust.open_consortium(new_raw, chain.bureau.public_key)
