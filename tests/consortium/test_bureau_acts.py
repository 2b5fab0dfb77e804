"""Bureau acts on a production consortium: decided once by the bureau's node (the only one
holding the bureau's key), logged as signed results, applied by every node."""

from __future__ import annotations

import sqlite3

from hostsim.bureau import BUREAU_KEY_FILE
from hostsim.chain.enrolment import code_hash
from tests.chain.conftest import b64
from tests.chain.test_enrolment import SHOP, Printer
from tests.consortium.conftest import Cluster, needs_etcd
from tests.shop import http

pytestmark = needs_etcd


def uses(cluster: Cluster, node_id: str, code: str) -> set[str]:
    """The devices a node's ledger records as having used the enrolment code."""
    path = cluster.data_dir(node_id) / "ledger.sqlite"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT device_id FROM enrolment_uses WHERE code_hash=?", (code_hash(code),)
        ).fetchall()
    finally:
        db.close()
    return {r[0] for r in rows}


def enrol(cluster: Cluster, node_id: str, devices: int) -> tuple[int, dict[str, object]]:
    status, body, _ = http(
        "POST",
        f"{cluster.url(node_id)}/admin/enrolments",
        {"tax_id": SHOP["tax_id"], "name": SHOP["name"], "devices": devices},
        {"Authorization": f"Bearer {cluster.token(node_id)}"},
    )
    return status, body


def register(cluster: Cluster, node_id: str, printer: Printer, code: str) -> tuple[int, dict]:
    status, body, _ = http(
        "POST",
        f"{cluster.url(node_id)}/v1/devices",
        {"csr": b64(printer.csr), "enrolment_code": code},
        timeout=60,
    )
    return status, body


def test_registration_and_segments_through_any_node(production: Cluster) -> None:
    cluster = production
    for node_id in ("enterprise1", "enterprise2", "enterprise3"):
        assert not (cluster.data_dir(node_id) / BUREAU_KEY_FILE).exists()
    status, issued = enrol(cluster, "bureau", devices=2)
    assert status == 201, issued
    code = str(issued["code"])
    # elsewhere: refused, naming where to ask
    status, refused = enrol(cluster, "enterprise1", devices=1)
    assert status == 503 and cluster.url("bureau") in str(refused), refused
    first, second, third = Printer(), Printer(), Printer()
    status, answer = register(cluster, "enterprise1", first, code)
    assert status == 201 and answer["device_id"] == first.device_id, answer
    status, answer = register(cluster, "enterprise2", second, code)
    assert status == 201 and answer["device_id"] == second.device_id, answer
    status, answer = register(cluster, "enterprise3", third, code)  # its 2 devices are used
    assert status == 403 and answer["error"]["code"] == "enrolment_used", answer
    status, seg, _ = http(
        "POST",
        f"{cluster.url('enterprise3')}/v1/devices/{first.device_id}/segments",
        {"request": b64(first.request(100))},
        timeout=60,
    )
    assert status == 201 and seg["end"] - seg["start"] == 99, seg
    status, again, _ = http(
        "POST",
        f"{cluster.url('enterprise2')}/v1/devices/{second.device_id}/segments",
        {"request": b64(second.request(50))},
        timeout=60,
    )
    assert status == 201 and again["start"] == seg["end"] + 1, again
    cluster.wait_same_height()
    rows = cluster.ledger_rows("bureau")
    for node_id in cluster.ids:
        assert cluster.ledger_rows(node_id) == rows, f"{node_id} differs"
        assert uses(cluster, node_id, code) == {first.device_id, second.device_id}, node_id
        cluster.verify(node_id)
        _, info, _ = http(
            "GET",
            f"{cluster.url(node_id)}/v1/devices/{first.device_id}",
            headers={"Authorization": f"Bearer {cluster.token(node_id)}"},
        )
        assert [s["start"] for s in info["segments"]] == [seg["start"]], info
