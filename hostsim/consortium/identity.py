"""A consortium node's identity on disk, and the setup ceremony that certifies it.

Each node's data directory holds its own Ed25519 key (`node.key`, created
owner-only by the node itself and never copied), the consortium object the
bureau signed over every node's public key (`consortium.cbor`), and the
bureau's public key (`bureau.pub`). Only the bureau's own node holds the
bureau's signing key (outside training, where the key is the public training
key anyway).

The ceremony: each node generates its key in its directory; the bureau reads
the public keys, issues the consortium object for epoch 1 and hands each node
its copy. Adding or replacing a node later is a new epoch the bureau signs and
the current quorum endorses (docs/trust.md).
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from device.protocol import trust
from device.protocol.clock import SystemClock
from device.protocol.keys import SEED_SIZE, KeyPair
from device.protocol.status import DeviceError
from hostsim.bureau import BUREAU_KEY_FILE, Bureau

NODE_KEY_FILE = "node.key"
CONSORTIUM_FILE = "consortium.cbor"
BUREAU_PUBLIC_FILE = "bureau.pub"
BUREAU_NODE = "bureau"


class SetupError(Exception):
    """The node directory is not set up, or not for this node."""


def node_key(directory: Path) -> KeyPair:
    """The node's key, created on first use: owner-only, on disk before it is used."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / NODE_KEY_FILE
    if path.exists():
        seed = path.read_bytes()
        if len(seed) != SEED_SIZE:
            raise SetupError(f"{path} is damaged (not a {SEED_SIZE}-byte seed)")
        return KeyPair.from_seed(seed)
    seed = secrets.token_bytes(SEED_SIZE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(seed)
        handle.flush()
        os.fsync(handle.fileno())
    return KeyPair.from_seed(seed)


@dataclass(frozen=True)
class Identity:
    node_id: str
    key: KeyPair
    consortium: trust.ConsortiumKeys
    bureau_key: bytes


def load(directory: Path, node_id: str, training: bool) -> Identity:
    """This node's key and the consortium it belongs to, checked against each other."""
    key = node_key(directory)
    try:
        raw = (directory / CONSORTIUM_FILE).read_bytes()
        bureau_key = (directory / BUREAU_PUBLIC_FILE).read_bytes()
    except FileNotFoundError:
        raise SetupError(
            f"{directory} has no consortium yet: the bureau certifies the node keys first"
            f" (taxctl hostsim consortium init, or consortium up); this node's public key"
            f" is {key.public_key.hex()}"
        ) from None
    if training and bureau_key != trust.TRAINING_BUREAU.public_key:
        raise SetupError("a training node trusts the training bureau key only")
    try:
        consortium = trust.open_consortium(raw, bureau_key)
    except DeviceError as exc:
        raise SetupError(f"{directory / CONSORTIUM_FILE}: {exc.detail}") from None
    if consortium.training != training:
        raise SetupError(
            f"the consortium is a {'training' if consortium.training else 'production'} one;"
            f" start the node {'with' if consortium.training else 'without'} --training"
        )
    if consortium.nodes.get(node_id) != key.public_key:
        raise SetupError(f"the consortium does not certify this node's key as {node_id}")
    return Identity(node_id, key, consortium, bureau_key)


def ceremony(root: Path, node_ids: list[str], training: bool) -> trust.ConsortiumKeys:
    """Set up (or find already set up) the node directories under `root`/nodes/<id>:
    each node's key made in its own directory, the bureau's consortium over them."""
    bureau_dir = root / "bureau"
    bureau_dir.mkdir(parents=True, exist_ok=True)
    bureau = Bureau(bureau_dir, training)
    dirs = {n: root / "nodes" / n for n in node_ids}
    keys = {n: node_key(d).public_key for n, d in dirs.items()}
    existing = [d / CONSORTIUM_FILE for d in dirs.values() if (d / CONSORTIUM_FILE).exists()]
    if existing:
        consortium = trust.open_consortium(existing[0].read_bytes(), bureau.public_key)
        if consortium.nodes != keys:
            raise SetupError(f"{root} holds a consortium of other node keys")
        raw = consortium.raw
    else:
        chain_id = "taxctl-training" if training else f"taxctl-{secrets.token_hex(4)}"
        raw = bureau.consortium(chain_id, keys, SystemClock().now())
    for node_id, directory in dirs.items():
        write_public(directory / CONSORTIUM_FILE, raw)
        write_public(directory / BUREAU_PUBLIC_FILE, bureau.public_key)
        if node_id == BUREAU_NODE and not training:
            target = directory / BUREAU_KEY_FILE
            if not target.exists():  # the bureau's own node signs for the bureau
                shutil.copyfile(bureau_dir / BUREAU_KEY_FILE, target)
                target.chmod(0o600)
    return trust.open_consortium(raw, bureau.public_key)


def write_public(path: Path, data: bytes) -> None:
    if path.exists() and path.read_bytes() == data:
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
