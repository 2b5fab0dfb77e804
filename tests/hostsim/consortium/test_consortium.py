"""The etcd-backed consortium end to end: 3 etcd members, 4 node processes on loopback,
printers selling through syncd given every node's URL."""

from __future__ import annotations

import shutil
import time
import urllib.request
from typing import Any

import cbor2

from hostsim.audit import chain_documents
from tests.helpers import export_documents
from tests.hostsim.chain.conftest import DeviceSim
from tests.hostsim.consortium.conftest import Cluster, needs_etcd
from tests.shop import INVOICE, Shop, http, wait_for

pytestmark = needs_etcd

PRINTERS = ("p1", "p2")


def sell(shop: Shop, count: int) -> None:
    for _ in range(count):
        for name in PRINTERS:
            device_id = shop.devices[name].ready["device_id"]
            status, body = shop.issue({**INVOICE, "device": device_id})
            assert status == 201, body


def start_shop(shop: Shop, cluster: Cluster) -> None:
    for name in PRINTERS:
        shop.start_device(name)
    shop.start_syncd(devices=PRINTERS, chains=tuple(cluster.urls))


def assert_on_chain_once(shop: Shop, cluster: Cluster, node_id: str) -> int:
    """Every journal document of both printers is on the node's chain once, in order,
    byte for byte, after syncd reports the printers synced (receipts accepted)."""
    total = 0
    for index, name in enumerate(PRINTERS):
        journal = export_documents(shop.root / name)
        shop.wait_synced(len(journal), timeout=90, index=index)
        device_id = shop.devices[name].ready["device_id"]
        on_chain = chain_documents(cluster.url(node_id), device_id, cluster.token(node_id))
        assert [c for c, _ in on_chain] == list(range(1, len(journal) + 1))
        assert [raw for _, raw in on_chain] == [j["raw"] for j in journal]
        total += len(journal)
    return total


def test_kill_a_node_and_the_etcd_leader(cluster: Cluster, shop: Shop) -> None:
    start_shop(shop, cluster)
    sell(shop, 5)
    # syncd's first node, which is also the first proposer
    cluster.kill_node("bureau")
    cluster.kill_etcd(cluster.etcd_leader())
    sell(shop, 5)
    live = ["enterprise1", "enterprise2", "enterprise3"]
    assert assert_on_chain_once(shop, cluster, "enterprise1") == 20
    cluster.start_node("bureau")
    height = cluster.wait_same_height()
    assert height >= 2
    rows = cluster.ledger_rows("enterprise1")
    for node_id in cluster.ids:
        assert cluster.ledger_rows(node_id) == rows, f"{node_id} differs"
        assert "20 documents from 2 devices" in cluster.verify(node_id)
    assert all(cluster.health(n)["finalizing"] for n in live)


def test_two_nodes_down_nothing_final_then_heal(cluster: Cluster, shop: Shop) -> None:
    start_shop(shop, cluster)
    sell(shop, 2)
    assert_on_chain_once(shop, cluster, "bureau")
    before = cluster.heights()
    cluster.kill_node("enterprise2", sig=15)
    cluster.kill_node("enterprise3", sig=15)
    sell(shop, 4)  # the printers keep issuing: nothing waits for the chain
    time.sleep(3)
    assert cluster.heights(["bureau", "enterprise1"]) == {
        n: before[n] for n in ("bureau", "enterprise1")
    }
    for index, _ in enumerate(PRINTERS):
        assert shop.device_status(index)["synced_through"] == 2
    cluster.start_node("enterprise2")
    cluster.start_node("enterprise3")
    assert assert_on_chain_once(shop, cluster, "enterprise3") == 12
    cluster.wait_same_height()
    rows = cluster.ledger_rows("bureau")
    for node_id in cluster.ids:
        assert cluster.ledger_rows(node_id) == rows


def test_a_node_signing_another_header_cannot_make_it_final(cluster: Cluster) -> None:
    cluster.kill_node("enterprise3")
    cluster.start_node("enterprise3", env={"TAXCTL_CONSORTIUM_FAULT": "equivocate"})
    device = DeviceSim(cluster.root / "device")
    try:
        answer = submit(
            cluster,
            "enterprise1",
            "/v1/devices",
            {"certificate": device.certificate, "segments": device.segments},
        )
        assert answer["device_id"] == device.device_id
        for node_id in ("bureau", "enterprise2"):
            result = submit(cluster, node_id, "/v1/documents", {"documents": device.issue(3)})
            assert result["counts"] == {"committed": 3}
            for receipt in result["results"]:
                signers = {s["node_id"] for s in receipt["receipt"]["signatures"]}
                assert "enterprise3" not in signers
    finally:
        device.close()
    height = cluster.wait_same_height()
    assert height == 3
    rows = cluster.ledger_rows("bureau")
    for node_id in cluster.ids:
        assert cluster.ledger_rows(node_id) == rows
        cluster.verify(node_id)
    for node_id in ("bureau", "enterprise1", "enterprise2"):
        recorded = wait_for(lambda n=node_id: cluster.evidence(n), 10, "evidence")
        assert {who for _, who in recorded} == {"enterprise3"}
        assert {h for h, _ in recorded} <= {1, 2, 3}


def submit(cluster: Cluster, node_id: str, path: str, body: dict[str, Any]) -> Any:
    """POST a CBOR body to one node; its CBOR answer."""
    request = urllib.request.Request(
        f"{cluster.url(node_id)}{path}",
        data=cbor2.dumps(body),
        method="POST",
        headers={"Content-Type": "application/cbor", "Accept": "application/cbor"},
    )
    with urllib.request.urlopen(request, timeout=60) as resp:
        assert resp.status in (200, 201)
        return cbor2.loads(resp.read())


def test_held_and_equivocation_are_decided_by_log_order_alike(cluster: Cluster) -> None:
    """A device's documents sent out of order to different nodes: held behind the gap,
    then final once it fills; a second document under a used counter (a cloned device
    state) is an equivocation on every node's record, not only where it was sent."""
    device = DeviceSim(cluster.root / "device")
    shutil.copytree(cluster.root / "device", cluster.root / "clone")
    clone = DeviceSim(cluster.root / "clone")
    try:
        submit(
            cluster,
            "bureau",
            "/v1/devices",
            {"certificate": device.certificate, "segments": device.segments},
        )
        first, later = device.issue(2), device.issue(2)
        held = submit(cluster, "enterprise1", "/v1/documents", {"documents": later})
        assert held["counts"] == {"held": 2}
        done = submit(cluster, "enterprise2", "/v1/documents", {"documents": first})
        assert done["counts"] == {"committed": 2}
        again = submit(cluster, "enterprise3", "/v1/documents?wait=30", {"documents": later})
        assert again["counts"] in ({"committed": 2}, {"duplicate": 2})
        forked = submit(
            cluster, "enterprise3", "/v1/documents", {"documents": clone.issue(1, price=777)}
        )
        assert forked["results"][0]["code"] == "equivocation"
    finally:
        device.close()
        clone.close()
    cluster.wait_same_height()
    rows = cluster.ledger_rows("bureau")
    for node_id in cluster.ids:
        assert cluster.ledger_rows(node_id) == rows
        assert "4 documents from 1 devices" in cluster.verify(node_id)
        _, info, _ = http(
            "GET",
            f"{cluster.url(node_id)}/v1/devices/{device.device_id}",
            headers={"Authorization": f"Bearer {cluster.token(node_id)}"},
        )
        assert [e["counter"] for e in info["equivocations"]] == [1], node_id
