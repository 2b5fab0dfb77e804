"""Consortium epochs on the etcd consortium: a node's key replaced and a node added mid-run,
each a bureau-signed epoch + 1 applied by every node at the same log position."""

from __future__ import annotations

import base64
import sqlite3

import pytest

from device.protocol import codec, trust
from device.protocol.keys import KeyPair
from device.protocol.status import DeviceError
from hostsim.consortium import identity
from tests.hostsim.consortium.conftest import Cluster, needs_etcd
from tests.hostsim.consortium.test_consortium import (
    PRINTERS,
    assert_on_chain_once,
    sell,
    start_shop,
)
from tests.shop import Shop, wait_for
from tests.syncd.test_rotation import held_epoch

pytestmark = needs_etcd


def block_signers(cluster: Cluster, node_id: str, keys: dict[str, bytes]) -> dict[int, set[str]]:
    """Per block of a node's ledger: the nodes whose stored signature verifies with `keys`."""
    db = sqlite3.connect(f"file:{cluster.data_dir(node_id) / 'ledger.sqlite'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT height, header, signatures FROM blocks").fetchall()
    finally:
        db.close()
    return {
        height: trust.signers(codec.decode(signatures), keys, trust.BLOCK_DOMAIN + bytes(header))
        for height, header, signatures in rows
    }


def resync(shop: Shop, cluster: Cluster) -> None:
    """syncd afresh: it fetches the consortium in force, offered with its endorsements."""
    assert shop.syncd is not None
    shop.syncd.stop()
    shop.start_syncd(devices=PRINTERS, chains=tuple(cluster.urls))


def test_replace_a_node_and_add_one_mid_run(cluster: Cluster, shop: Shop) -> None:
    start_shop(shop, cluster)
    sell(shop, 2)
    assert_on_chain_once(shop, cluster, "bureau")
    old_key = identity.node_key(cluster.data_dir("enterprise3"))
    # epoch 2: enterprise3's key replaced; the old process is still running
    fresh = cluster.root / "replacement" / "enterprise3"
    answer = cluster.rotate("enterprise3", identity.node_key(fresh).public_key)
    assert answer["epoch"] == 2 and answer["endorsed_by"] >= 3, answer
    epoch2 = base64.b64decode(answer["consortium"])
    switched = int(answer["from_height"])
    wait_for(
        lambda: cluster.health("enterprise3")["ordering"]["certified"] is False,
        30,
        "the replaced node knows it signs nothing",
    )
    sell(shop, 2)  # final without the replacing node: bureau, enterprise1, enterprise2
    assert_on_chain_once(shop, cluster, "enterprise1")
    cluster.kill_node("enterprise3", sig=15)
    cluster.join("enterprise3", fresh, epoch2)
    resync(shop, cluster)
    sell(shop, 2)
    assert_on_chain_once(shop, cluster, "enterprise3")
    for name in PRINTERS:
        wait_for(lambda n=name: held_epoch(shop.root / n) == 2, 30, f"{name} at epoch 2")
    # epoch 3: a fifth node
    fifth = cluster.root / "nodes" / "enterprise4"
    answer = cluster.rotate("enterprise4", identity.node_key(fifth).public_key)
    assert answer["epoch"] == 3, answer
    epoch3 = trust.open_consortium(
        base64.b64decode(answer["consortium"]), trust.TRAINING_BUREAU.public_key
    )
    assert len(epoch3.nodes) == 5 and epoch3.quorum == 3
    cluster.join("enterprise4", fifth, epoch3.raw)
    resync(shop, cluster)
    sell(shop, 2)
    assert assert_on_chain_once(shop, cluster, "enterprise4") == 16
    for name in PRINTERS:
        wait_for(lambda n=name: held_epoch(shop.root / n) == 3, 30, f"{name} at epoch 3")
    cluster.wait_same_height()
    rows = cluster.ledger_rows("bureau")
    for node_id in cluster.ids:
        assert cluster.ledger_rows(node_id) == rows, f"{node_id} differs"
        assert "16 documents from 2 devices" in cluster.verify(node_id)
    # the replaced key signed no block from the switch on, and counts for nothing
    old = {"enterprise3": old_key.public_key}
    signed_by_old = block_signers(cluster, "bureau", old)
    assert max(signed_by_old) >= switched + 2  # blocks after the switch, in two epochs
    assert {h for h, who in signed_by_old.items() if who} <= set(range(1, switched))
    assert_old_key_counts_for_nothing(cluster, old_key.seed, epoch3)


def assert_old_key_counts_for_nothing(
    cluster: Cluster, old_seed: bytes, epoch3: trust.ConsortiumKeys
) -> None:
    """The last block's header signed by the replaced key and two current nodes: not final
    under epoch 3 (a device refuses it), final with a third current node."""
    db = sqlite3.connect(f"file:{cluster.data_dir('bureau') / 'ledger.sqlite'}?mode=ro", uri=True)
    try:
        header_raw, stored = db.execute(
            "SELECT header, signatures FROM blocks ORDER BY height DESC LIMIT 1"
        ).fetchone()
    finally:
        db.close()
    header = codec.decode(bytes(header_raw))
    current = [
        s
        for s in codec.decode(bytes(stored))
        if trust.signers([s], epoch3.nodes, trust.BLOCK_DOMAIN + bytes(header_raw))
    ]
    assert len(current) >= 3
    forged = {
        "node_id": "enterprise3",
        "signature": trust.sign_header(KeyPair.from_seed(old_seed), header),
    }
    others = [s for s in current if s["node_id"] != "enterprise3"][:2]
    with pytest.raises(DeviceError, match="2 valid node signatures, 3 needed"):
        trust.check_quorum(header, [forged, *others], epoch3)
    trust.check_quorum(header, current, epoch3)
