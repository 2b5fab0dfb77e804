"""Merkle tree of a block's transactions (RFC 9162 §2.1, as in Certificate Transparency).

Leaves are document hashes. leaf = SHA-256(0x00 || data), node =
SHA-256(0x01 || left || right); the tree over n leaves splits at the
largest power of two below n. Built bottom-up, that is: pair neighbours,
carry an odd last node up unchanged. A block receipt carries the audit
path of one leaf so a device can check, offline, that its document is in
a block whose header a quorum signed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """Every level of the tree, leaf hashes first, root last."""
    level = [leaf_hash(x) for x in leaves]
    out = [level]
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        out.append(nxt)
        level = nxt
    return out


def root(leaves: Sequence[bytes]) -> bytes:
    if not leaves:
        return EMPTY_ROOT
    return levels(leaves)[-1][0]


def audit_path(tree: list[list[bytes]], index: int) -> list[bytes]:
    """The sibling hashes from leaf `index` up to the root, for a tree from `levels`."""
    if not tree or not 0 <= index < len(tree[0]):
        raise IndexError(f"leaf {index} not in a tree of {len(tree[0]) if tree else 0}")
    path = []
    for level in tree[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            path.append(level[sibling])
        index //= 2
    return path


def root_from_path(data: bytes, index: int, size: int, path: Sequence[bytes]) -> bytes | None:
    """The root implied by a leaf, its index, the tree size and its audit path.

    None when the path has the wrong length for that index and size.
    """
    if not 0 <= index < size:
        return None
    node = leaf_hash(data)
    remaining = list(path)
    while size > 1:
        if index % 2:
            if not remaining:
                return None
            node = node_hash(remaining.pop(0), node)
        elif index + 1 < size:
            if not remaining:
                return None
            node = node_hash(node, remaining.pop(0))
        index //= 2
        size = (size + 1) // 2
    return node if not remaining else None
