"""One chain instance: its ledger, nodes, bureau, engine and acts, opened from a data directory."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device.protocol import trust
from device.protocol.clock import Clock, SystemClock
from hostsim.bureau import Bureau
from hostsim.chain import rotation
from hostsim.chain.acts import Acts
from hostsim.chain.engine import Engine
from hostsim.chain.ledger import Ledger
from hostsim.chain.quorum import NodeSet
from hostsim.chain.state import HELD_LIMITS, HeldLimits


class ChainSetupError(Exception):
    """The data directory and the options disagree (mode, node count)."""


@dataclass
class Chain:
    directory: Path
    ledger: Ledger
    nodes: NodeSet
    bureau: Bureau
    engine: Engine
    acts: Acts
    chain_id: str
    training: bool
    consortium: bytes
    # The previous epoch's node signatures over `consortium` (empty at epoch 1).
    endorsements: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        nodes: int = 4,
        training: bool = False,
        clock: Clock | None = None,
        block_max: int = 2000,
        block_interval: float = 0.02,
        workers: int = 0,
        held_limits: HeldLimits = HELD_LIMITS,
    ) -> Chain:
        clock = clock or SystemClock()
        directory.mkdir(parents=True, exist_ok=True)
        ledger = Ledger(directory)
        try:
            _check_mode(ledger, directory, training)
            try:
                node_set = NodeSet.open(directory, nodes)
            except ValueError as exc:
                raise ChainSetupError(str(exc)) from None
            bureau = Bureau(directory, training)
            chain_id, consortium = _identity(ledger, bureau, node_set, training, clock)
            opened = trust.open_consortium(consortium, bureau.public_key)
            try:
                node_set = NodeSet.recover(directory, opened.nodes) or node_set
                epochs = rotation.load_epochs(ledger)
            except ValueError as exc:
                raise ChainSetupError(str(exc)) from None
            if opened.nodes != node_set.public_keys:
                raise ChainSetupError("the node keys do not match the consortium on record")
            engine = Engine(
                ledger,
                node_set,
                bureau,
                clock,
                chain_id=chain_id,
                training=training,
                block_max=block_max,
                block_interval=block_interval,
                workers=workers,
                held_limits=held_limits,
            )
            if epochs:
                engine.blocks.attest_from(epochs[-1].from_height)
        except BaseException:
            ledger.close()
            raise
        return cls(
            directory,
            ledger,
            node_set,
            bureau,
            engine,
            Acts(engine),
            chain_id,
            training,
            consortium,
            rotation.load_endorsements(ledger.get_meta(rotation.ENDORSEMENTS_META)),
        )

    def close(self) -> None:
        self.ledger.close()


def _check_mode(ledger: Ledger, directory: Path, training: bool) -> None:
    """A training chain is never started as a production one, nor the other way round."""
    mode = ledger.get_meta("training")
    if mode is not None and bool(mode[0]) != training:
        raise ChainSetupError(
            f"{directory} holds a {'training' if mode[0] else 'production'} chain;"
            f" start it {'with' if mode[0] else 'without'} --training"
        )


def _identity(
    ledger: Ledger, bureau: Bureau, node_set: NodeSet, training: bool, clock: Clock
) -> tuple[str, bytes]:
    """(chain id, consortium) on record; made and recorded at the chain's first start."""
    chain_id_raw = ledger.get_meta("chain_id")
    if chain_id_raw is not None:
        return chain_id_raw.decode(), ledger.get_meta("consortium") or b""
    chain_id = "taxctl-training" if training else f"taxctl-{secrets.token_hex(4)}"
    consortium = bureau.consortium(chain_id, node_set.public_keys, clock.now())
    with ledger.transaction():
        ledger.set_meta("training", bytes([training]))
        ledger.set_meta("chain_id", chain_id.encode())
        ledger.set_meta("consortium", consortium)
        ledger.set_meta("bureau_key", bureau.public_key)
    return chain_id, consortium
