"""Bureau acts on a production consortium: decided once by the bureau's node (the only one
holding the bureau's key), logged as signed results, applied by every node."""

from __future__ import annotations

import base64
import hashlib
import sqlite3
import time

from device.protocol import codec, trust
from device.protocol.keys import KeyPair
from hostsim.bureau import BUREAU_KEY_FILE
from hostsim.chain.enrolment import code_hash
from hostsim.consortium import decided
from hostsim.consortium import log as records
from tests.hostsim.chain.conftest import b64
from tests.hostsim.chain.test_enrolment import SHOP, Printer
from tests.hostsim.consortium.conftest import Cluster, etcd_call, needs_etcd
from tests.shop import http, wait_for

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
    # a new epoch is the bureau's too: another node cannot sign one
    status, refused, _ = http(
        "POST",
        f"{cluster.url('enterprise1')}/v1/consortium/rotate",
        {"node_id": "enterprise4", "public_key": KeyPair.generate().public_key.hex()},
        {"Authorization": f"Bearer {cluster.token('enterprise1')}"},
    )
    assert status == 503 and refused["error"]["code"] == "unavailable", refused
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


def put_log_entry(cluster: Cluster, chain_id: str, value: bytes) -> int:
    """Write an entry straight into the etcd log, as any etcd client could; its revision."""
    name = hashlib.sha256(value).digest()
    answer = etcd_call(
        cluster,
        "/v3/kv/put",
        {
            "key": base64.b64encode(records.Keys(chain_id).log_key(name)).decode(),
            "value": base64.b64encode(value).decode(),
        },
    )
    return int(answer["header"]["revision"])


def test_forged_bureau_results_in_the_log_change_nothing_anywhere(production: Cluster) -> None:
    """Entries no node wrote — an epoch, an enrolment, a segment not signed by the bureau,
    a registration carrying a CSR for every node to sign — are refused alike everywhere."""
    cluster = production
    _, info, _ = http("GET", f"{cluster.url('enterprise1')}/v1/consortium")
    chain_id = str(info["chain_id"])
    status, issued = enrol(cluster, "bureau", devices=1)
    assert status == 201, issued
    printer = Printer()
    assert register(cluster, "enterprise2", printer, str(issued["code"]))[0] == 201
    mallory = KeyPair.generate()
    stranger = Printer()
    record = codec.encode(
        {"row": [b"\x01" * 32, SHOP["tax_id"], "x", 9, 2**40, "x"], "token_hash": b"t"}
    )
    forged_segment = trust.issue_segment(
        mallory, printer.device_id, "144031900000", 900, 999, False, time.time()
    )
    acts = [
        (
            "epoch",
            {
                "consortium": trust.issue_consortium(
                    mallory, chain_id, 2, {"bureau": mallory.public_key}, False, time.time()
                )
            },
        ),
        (
            "enrolment",
            {"record": record, "signature": mallory.sign(decided.ENROLMENT_DOMAIN + record)},
        ),
        (
            "grant",
            {
                "device_id": printer.device_id,
                "raw": printer.request(100),
                "segment": forged_segment,
            },
        ),
        ("register", {"csr": stranger.csr, "certificate": None, "segments": [], "enrolment": None}),
    ]
    last = 0
    for name, args in acts:
        last = put_log_entry(cluster, chain_id, codec.encode({"act": name, "args": args}))
    for node_id in cluster.ids:
        wait_for(
            lambda n=node_id: cluster.health(n)["ordering"]["applied_revision"] >= last,
            30,
            f"{node_id} applied the forged entries",
        )
    cluster.wait_same_height()
    rows = cluster.ledger_rows("bureau")
    for node_id in cluster.ids:
        assert cluster.ledger_rows(node_id) == rows, node_id
        assert cluster.health(node_id)["ordering"]["epoch"] == 1
        path = cluster.data_dir(node_id) / "ledger.sqlite"
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            assert db.execute("SELECT COUNT(*) FROM enrolments").fetchone() == (1,)
        finally:
            db.close()
        headers = {"Authorization": f"Bearer {cluster.token(node_id)}"}
        _, device, _ = http(
            "GET", f"{cluster.url(node_id)}/v1/devices/{printer.device_id}", headers=headers
        )
        assert device["segments"] == [], device
        status, _, _ = http(
            "GET", f"{cluster.url(node_id)}/v1/devices/{stranger.device_id}", headers=headers
        )
        assert status == 404
