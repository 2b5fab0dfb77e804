"""Consortium rotation: the bureau issues epoch + 1, the current nodes endorse it.

A device moves to a new epoch only with the endorsements of the held
epoch's quorum (device/protocol/trust.py `check_rotation`), so the chain
hands them out with the consortium (`GET /v1/consortium`). The nodes run in
this process, so each endorses with its own key here. The node keys stay as
they are: blocks already final keep verifying under every epoch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from device.protocol import codec, trust
from hostsim.chain.errors import ChainError, Code

if TYPE_CHECKING:
    from hostsim.chain.node import Chain

ENDORSEMENTS_META = "consortium_endorsements"


def load_endorsements(raw: bytes | None) -> list[dict[str, Any]]:
    value = codec.decode(raw) if raw else []
    return value if isinstance(value, list) else []


def rotate(chain: Chain) -> trust.Consortium:
    """Issue and record the next epoch, endorsed by the current quorum's reachable nodes."""
    current = trust.open_consortium(chain.consortium, chain.bureau.public_key)
    reachable = chain.nodes.available()
    if len(reachable) < current.quorum:
        raise ChainError(
            Code.UNAVAILABLE,
            f"{len(reachable)} nodes reachable, {current.quorum} must endorse a rotation",
        )
    new_raw = trust.issue_consortium(
        chain.bureau.key,
        chain.chain_id,
        current.epoch + 1,
        chain.nodes.public_keys,
        chain.training,
        chain.engine.clock.now(),
    )
    endorsements = [
        {"node_id": node_id, "signature": trust.sign_rotation(chain.nodes.keys[node_id], new_raw)}
        for node_id in sorted(reachable)
    ]
    with chain.ledger.transaction():
        chain.ledger.set_meta("consortium", new_raw)
        chain.ledger.set_meta(ENDORSEMENTS_META, codec.encode(endorsements))
    chain.consortium, chain.endorsements = new_raw, endorsements
    return trust.open_consortium(new_raw, chain.bureau.public_key)
