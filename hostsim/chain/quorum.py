"""The consortium's nodes: their keys, which of them can currently sign, and finality.

All N nodes run in this process; each keeps its own Ed25519 key (persisted
under the data directory, owner-only) and signs a block header only while
it is not partitioned. A block is final when 2f+1 distinct nodes signed
it, f = ⌊(N−1)/3⌋; with fewer reachable nodes nothing finalizes and
transactions wait in the mempool until the partition heals.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from device.protocol import trust
from device.protocol.keys import KeyPair
from device.protocol.untrusted import InputRefused, loads_json, shown

NODES_FILE = "nodes.json"
# A rotation that replaces keys writes them here first; the ledger's record of the new
# consortium decides, at the next start, whether they replace NODES_FILE or are dropped.
NEXT_FILE = "nodes.json.next"


def node_ids(count: int) -> list[str]:
    """The tax bureau's node first, then the enterprise nodes."""
    return ["bureau"] + [f"enterprise{i}" for i in range(1, count)]


def _read_keys(path: Path) -> dict[str, KeyPair]:
    """The node keys as `open` wrote them: [{"node_id", "seed"}, ...]; ValueError for a
    file that is not that (damaged or edited), never whatever indexing it raises."""
    try:
        data = loads_json(path.read_bytes())
    except InputRefused as exc:
        raise ValueError(f"{path} is damaged: {exc}") from None
    keys: dict[str, KeyPair] = {}
    for entry in data if isinstance(data, list) else [data]:
        node_id = entry.get("node_id") if isinstance(entry, dict) else None
        seed = entry.get("seed") if isinstance(entry, dict) else None
        if not isinstance(node_id, str) or not isinstance(seed, str):
            raise ValueError(f"{path} is damaged: each entry is a node_id and a seed")
        try:
            keys[node_id] = KeyPair.from_seed(bytes.fromhex(seed))
        except ValueError:
            raise ValueError(f"{path} is damaged: the seed of {shown(node_id)}") from None
    return keys


def _write_keys(path: Path, keys: Mapping[str, KeyPair]) -> None:
    """Owner-only, created fresh, on disk before this returns."""
    entries = [{"node_id": n, "seed": k.seed.hex()} for n, k in keys.items()]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(entries, handle)
        handle.flush()
        os.fsync(handle.fileno())


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class NodeSet:
    def __init__(self, keys: Mapping[str, KeyPair]) -> None:
        self.keys = dict(keys)
        self.partitioned: set[str] = set()

    @classmethod
    def open(cls, directory: Path, count: int) -> NodeSet:
        """Load the node keys, creating them on first start; the count cannot change later."""
        path = directory / NODES_FILE
        if path.exists():
            keys = _read_keys(path)
            if len(keys) != count:
                raise ValueError(
                    f"this ledger was created with {len(keys)} nodes;"
                    f" start it with --nodes {len(keys)}"
                )
            return cls(keys)
        if count < 1:
            raise ValueError("a chain needs at least one node")
        keys = {node_id: KeyPair.generate() for node_id in node_ids(count)}
        _write_keys(path, keys)
        return cls(keys)

    @staticmethod
    def stage(directory: Path, keys: Mapping[str, KeyPair]) -> None:
        """Write the keys a rotation is about to put in force, beside the current ones."""
        path = directory / NEXT_FILE
        path.unlink(missing_ok=True)
        _write_keys(path, keys)

    @staticmethod
    def promote(directory: Path) -> None:
        """The staged keys are in force (the ledger recorded their consortium): the old
        seeds are gone with the rename."""
        os.replace(directory / NEXT_FILE, directory / NODES_FILE)
        _sync_dir(directory)

    @classmethod
    def recover(cls, directory: Path, recorded: Mapping[str, bytes]) -> NodeSet | None:
        """After a crash inside a rotation: the staged keys if the ledger recorded their
        consortium (the rename did not happen yet), else None; staged keys the ledger
        never recorded are dropped."""
        path = directory / NEXT_FILE
        if not path.exists():
            return None
        staged = cls(_read_keys(path))
        if staged.public_keys == dict(recorded):
            cls.promote(directory)
            return staged
        path.unlink()
        return None

    def replace(self, node_ids: Iterable[str]) -> dict[str, KeyPair]:
        """The key set with fresh keys for `node_ids` (this set itself is unchanged)."""
        wanted = set(node_ids)
        unknown = wanted - set(self.keys)
        if unknown:
            raise KeyError(f"no such node: {', '.join(sorted(shown(n) for n in unknown))}")
        return {n: KeyPair.generate() if n in wanted else k for n, k in self.keys.items()}

    @property
    def public_keys(self) -> dict[str, bytes]:
        return {node_id: key.public_key for node_id, key in self.keys.items()}

    @property
    def quorum(self) -> int:
        return trust.quorum(len(self.keys))

    def available(self) -> list[str]:
        return [n for n in self.keys if n not in self.partitioned]

    def has_quorum(self) -> bool:
        return len(self.available()) >= self.quorum

    def partition(self, nodes: Iterable[str]) -> None:
        unknown = set(nodes) - set(self.keys)
        if unknown:
            raise KeyError(f"no such node: {', '.join(sorted(unknown))}")
        self.partitioned |= set(nodes)

    def heal(self) -> None:
        self.partitioned.clear()

    def sign(self, header: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Signatures of every reachable node (the caller checks there are enough): what
        `trust.sign_header` signs, with the header encoded once for all of them."""
        message = trust.BLOCK_DOMAIN + trust.header_bytes(header)
        return [
            {"node_id": node_id, "signature": self.keys[node_id].sign(message)}
            for node_id in self.available()
        ]
