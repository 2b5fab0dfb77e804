"""Catch-up past the etcd log, trimming and compaction, and the NOSPACE alarm in health."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any

import cbor2

from tests.hostsim.chain.conftest import DeviceSim
from tests.hostsim.consortium.conftest import Cluster, etcd_call, etcd_keys, needs_etcd
from tests.shop import http, wait_for

pytestmark = needs_etcd

PREFIX = b"/taxctl/taxctl-training/"


def post(cluster: Cluster, node_id: str, path: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        f"{cluster.url(node_id)}{path}",
        data=cbor2.dumps(body),
        method="POST",
        headers={"Content-Type": "application/cbor", "Accept": "application/cbor"},
    )
    with urllib.request.urlopen(request, timeout=60) as resp:
        return cbor2.loads(resp.read())


def compacted(cluster: Cluster, revision: int) -> bool:
    """Whether etcd refuses a read at `revision` as compacted away."""
    body = {"key": base64.b64encode(PREFIX).decode(), "revision": str(revision)}
    try:
        answer = etcd_call(cluster, "/v3/kv/range", body)
    except urllib.error.HTTPError as exc:
        return b"compacted" in exc.read()
    return "compacted" in json.dumps(answer)


def register(cluster: Cluster, device: DeviceSim) -> None:
    body = {"certificate": device.certificate, "segments": device.segments}
    assert post(cluster, "bureau", "/v1/devices", body)["device_id"] == device.device_id


def test_a_node_away_past_the_retention_catches_up_from_peers(
    short_retention: Cluster,
) -> None:
    cluster = short_retention
    device = DeviceSim(cluster.root / "device")
    try:
        register(cluster, device)
        cluster.kill_node("enterprise3")
        for node_id in ("bureau", "enterprise1", "enterprise2") * 2:
            result = post(cluster, node_id, "/v1/documents", {"documents": device.issue(5)})
            assert result["counts"] == {"committed": 5}
        # the proposer drops what the three others applied and compacts etcd to it
        try:
            wait_for(lambda: not etcd_keys(cluster, PREFIX + b"log/"), 60, "the log trimmed")
        except AssertionError:
            left = etcd_keys(cluster, PREFIX + b"log/")
            marks = {k: cluster.health(k)["ordering"] for k in cluster.ids if k != "enterprise3"}
            raise AssertionError(f"log keys left: {left}; nodes: {marks}") from None
        # ... and compacted it: an old revision is gone
        wait_for(lambda: compacted(cluster, 2), 30, "etcd compacted")
        proposals = etcd_keys(cluster, PREFIX + b"prop/")
        assert all(int(k.rsplit(b"/", 1)[1]) >= 7 for k in proposals), proposals
        cluster.start_node("enterprise3")
        assert cluster.wait_same_height() == 7
        more = post(cluster, "enterprise3", "/v1/documents", {"documents": device.issue(5)})
        assert more["counts"] == {"committed": 5}
    finally:
        device.close()
    cluster.wait_same_height()
    rows = cluster.ledger_rows("bureau")
    for node_id in cluster.ids:
        assert cluster.ledger_rows(node_id) == rows, node_id
        assert "35 documents from 1 devices" in cluster.verify(node_id)


def test_nospace_shows_in_health_until_disarmed(cluster: Cluster) -> None:
    member = etcd_call(cluster, "/v3/maintenance/status", {})["header"]["member_id"]
    alarm = {"memberID": member, "alarm": "NOSPACE"}
    etcd_call(cluster, "/v3/maintenance/alarm", {"action": "ACTIVATE", **alarm})

    def degraded() -> dict[str, Any] | None:
        health = cluster.health("enterprise1")
        return health if health["status"] == "degraded" else None

    health = wait_for(degraded, 10, "NOSPACE in health")
    assert "NOSPACE" in health["error"]
    assert health["ordering"]["alarms"] == ["NOSPACE"]
    etcd_call(cluster, "/v3/maintenance/alarm", {"action": "DEACTIVATE", **alarm})
    wait_for(lambda: cluster.health("enterprise1")["status"] == "ok", 10, "health ok again")


def test_consortium_up_prints_one_ready_line_and_stops_on_sigterm(tmp_path: Any) -> None:
    import os
    import signal
    import subprocess
    import sys

    from hostsim.consortium.up import _ready_line

    proc = subprocess.Popen(
        [sys.executable, "-m", "taxctl", "hostsim", "consortium", "up", "--dir",
         str(tmp_path / "c"), "--training", "--nodes", "4", "--etcd-members", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        ready = _ready_line(proc, 90)
        assert ready is not None
        assert [n["id"] for n in ready["nodes"]] == [
            "bureau", "enterprise1", "enterprise2", "enterprise3"
        ]  # fmt: skip
        assert len(ready["etcd"]) == 3 and all(m["client_url"] for m in ready["etcd"])
        url = ready["nodes"][2]["url"]
        with urllib.request.urlopen(f"{url}/v1/health", timeout=10) as resp:
            assert json.loads(resp.read())["quorum"] == 3
        pids = [n["pid"] for n in ready["nodes"]] + [m["pid"] for m in ready["etcd"]]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        for pid in pids:
            assert not os.path.exists(f"/proc/{pid}") or _zombie(pid), pid
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for node_id in ("bureau", "enterprise1", "enterprise2", "enterprise3"):
        out = subprocess.run(
            [sys.executable, "-m", "taxctl", "hostsim", "chain", "verify", "--data",
             str(tmp_path / "c" / "nodes" / node_id)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1].startswith("Z")
    except FileNotFoundError:
        return True


def test_junk_written_into_etcd_changes_nothing(cluster: Cluster) -> None:
    """Any etcd client can write under the chain's prefix: a log entry that is not ours,
    signatures and final records that do not verify, a proposal far ahead — here before
    the first block, when no real proposal is there yet. Every node skips them alike
    and goes on; the peer route wants a node's signature."""
    junk = {
        # first: a stray far-future proposal does not make the nodes think the log was
        # trimmed (before the first block there is no real proposal to compare it with)
        PREFIX + b"prop/000000099999": b"\x00",
        PREFIX + b"log/junk1": b"\xff\x00garbage",
        PREFIX + b"log/junk2": cbor2.dumps({"docs": [b"not a document"]}),
        PREFIX + b"log/junk3": cbor2.dumps({"act": "revoke", "args": {"device_id": 7}}),
        PREFIX + b"sig/000000000001/enterprise1": cbor2.dumps({"header": b"x"}),
        PREFIX + b"final/000000000001/mallory": cbor2.dumps(
            {"header": b"h", "signatures": [{"node_id": "bureau", "signature": b"s"}]}
        ),
    }
    for key, value in junk.items():
        etcd_call(
            cluster,
            "/v3/kv/put",
            {"key": base64.b64encode(key).decode(), "value": base64.b64encode(value).decode()},
        )
    device = DeviceSim(cluster.root / "device")
    try:
        register(cluster, device)
        result = post(cluster, "enterprise2", "/v1/documents", {"documents": device.issue(4)})
        assert result["counts"] == {"committed": 4}
    finally:
        device.close()
    cluster.wait_same_height()
    rows = cluster.ledger_rows("bureau")
    for node_id in cluster.ids:
        assert cluster.ledger_rows(node_id) == rows
        assert cluster.health(node_id)["status"] == "ok"
    status, body, _ = http("GET", f"{cluster.url('bureau')}/peer/blocks?from=1")
    assert status == 401 and body["error"]["code"] == "unauthorized"
