"""A consortium on loopback for the tests: etcd members and node processes, each its own
process, started with the same functions `taxctl hostsim consortium up` uses, so a test
can kill and restart any one of them."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hostsim.consortium import identity, up
from tests.shop import http, shop, wait_for

__all__ = ["Cluster", "cluster", "needs_etcd", "production", "shop", "short_retention"]

ETCD = shutil.which("etcd")

needs_etcd = pytest.mark.skipif(
    ETCD is None, reason="etcd is not installed (Debian package etcd-server; .ci/run installs it)"
)


class Cluster:
    def __init__(
        self,
        root: Path,
        nodes: int = 4,
        members: int = 3,
        node_args: tuple[str, ...] = (),
        training: bool = True,
    ) -> None:
        assert ETCD is not None
        self.root = root
        self.node_args = node_args
        self.training = training
        self.plan = up.cluster_plan(root, nodes, members)
        identity.ceremony(root, [n["id"] for n in self.plan["nodes"]], training=training)
        self.etcd = {m.name: m for m in up.start_etcd(ETCD, root, self.plan)}
        self.etcd_urls = [m.url for m in self.etcd.values()]
        up.asyncio.run(up._wait_etcd(self.etcd_urls))
        self.nodes: dict[str, up.Started] = {}
        for node in self.plan["nodes"]:
            self.start_node(node["id"])

    @property
    def ids(self) -> list[str]:
        return [n["id"] for n in self.plan["nodes"]]

    def data_dir(self, node_id: str) -> Path:
        node = next(n for n in self.plan["nodes"] if n["id"] == node_id)
        return Path(node.get("data") or self.root / "nodes" / node_id)

    def rotate(self, node_id: str, public_key: bytes) -> dict[str, Any]:
        """Epoch + 1 through the bureau's node: `node_id` added, or its key replaced."""
        status, answer, _ = http(
            "POST",
            f"{self.url('bureau')}/v1/consortium/rotate",
            {"node_id": node_id, "public_key": public_key.hex()},
            {"Authorization": f"Bearer {self.token('bureau')}"},
            timeout=90,
        )
        assert status == 201, answer
        return dict(answer)

    def join(self, node_id: str, directory: Path, consortium: bytes) -> None:
        """Start a node from a fresh directory (its key made there) certified in the
        epoch `consortium`; it catches up from its peers. A replacing node takes the
        replaced one's port (stopped already), a new node a new port."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / identity.CONSORTIUM_FILE).write_bytes(consortium)
        shutil.copyfile(
            self.data_dir("bureau") / identity.BUREAU_PUBLIC_FILE,
            directory / identity.BUREAU_PUBLIC_FILE,
        )
        known = next((n for n in self.plan["nodes"] if n["id"] == node_id), None)
        if known is None:
            known = {"id": node_id, "port": up._free_port()}
            self.plan["nodes"].append(known)
        known["data"] = str(directory)
        self.start_node(node_id)

    def url(self, node_id: str) -> str:
        port = next(n["port"] for n in self.plan["nodes"] if n["id"] == node_id)
        return f"http://127.0.0.1:{port}"

    @property
    def urls(self) -> list[str]:
        return [self.url(n) for n in self.ids]

    def start_node(self, node_id: str, env: dict[str, str] | None = None) -> None:
        node = next(n for n in self.plan["nodes"] if n["id"] == node_id)
        saved = dict(os.environ)
        os.environ.update(env or {})
        try:
            self.nodes[node_id] = up.start_node(
                self.root, node, self.etcd_urls, training=self.training, extra=self.node_args
            )
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def kill_node(self, node_id: str, sig: int = signal.SIGKILL) -> None:
        proc = self.nodes[node_id].proc
        proc.send_signal(sig)
        proc.wait(20)

    def etcd_leader(self) -> str:
        """The name of the etcd member that is the raft leader now."""
        leader = up.etcd_leader(list(self.etcd.values()))
        assert leader is not None, "no etcd leader"
        return leader.name

    def kill_etcd(self, name: str) -> None:
        proc = self.etcd[name].proc
        proc.send_signal(signal.SIGKILL)
        proc.wait(20)

    def health(self, node_id: str) -> dict[str, Any]:
        return http("GET", f"{self.url(node_id)}/v1/health", timeout=5)[1]

    def heights(self, ids: list[str] | None = None) -> dict[str, int]:
        return {n: self.health(n)["height"] for n in ids or self.ids}

    def wait_same_height(self, ids: list[str] | None = None, timeout: float = 60) -> int:
        def same() -> int | None:
            seen = set(self.heights(ids).values())
            return seen.pop() if len(seen) == 1 and 0 not in seen else None

        return int(wait_for(same, timeout, "every node at the same height"))

    def token(self, node_id: str) -> str:
        return (self.data_dir(node_id) / "admin.token").read_text().strip()

    def ledger_rows(self, node_id: str) -> list[Any]:
        """Every block and transaction row of a node's ledger, as stored."""
        path = self.data_dir(node_id) / "ledger.sqlite"
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return [
                db.execute("SELECT * FROM blocks ORDER BY height").fetchall(),
                db.execute("SELECT * FROM txs ORDER BY height, position").fetchall(),
            ]
        finally:
            db.close()

    def evidence(self, node_id: str) -> list[Any]:
        path = self.data_dir(node_id) / "ledger.sqlite"
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return db.execute("SELECT height, node_id FROM node_evidence").fetchall()
        finally:
            db.close()

    def verify(self, node_id: str) -> str:
        out = subprocess.run(
            [
                *up.sys_executable(),
                "hostsim",
                "chain",
                "verify",
                "--data",
                str(self.data_dir(node_id)),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    def stop(self) -> None:
        up.stop(list(self.nodes.values()))
        up.stop_etcd(list(self.etcd.values()))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "consortium")
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def production(tmp_path: Path) -> Iterator[Cluster]:
    """A production (non-training) consortium: only the bureau's node holds its key."""
    c = Cluster(tmp_path / "consortium", training=False)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def short_retention(tmp_path: Path) -> Iterator[Cluster]:
    """Nodes keep the etcd log for a node gone 3 s only: then it catches up from peers."""
    c = Cluster(tmp_path / "consortium", node_args=("--retain-seconds", "3"))
    try:
        yield c
    finally:
        c.stop()


def etcd_call(cluster: Cluster, path: str, body: dict[str, Any]) -> Any:
    """One request to etcd's JSON gateway on the first live member."""
    for member in cluster.etcd.values():
        if member.proc.poll() is None:
            request = urllib.request.Request(
                f"{member.url}{path}", data=json.dumps(body).encode(), method="POST"
            )
            with urllib.request.urlopen(request, timeout=10) as resp:
                return json.loads(resp.read())
    raise AssertionError("no etcd member is running")


def etcd_keys(cluster: Cluster, prefix: bytes) -> list[bytes]:
    end = bytearray(prefix)
    end[-1] += 1
    answer = etcd_call(
        cluster,
        "/v3/kv/range",
        {
            "key": base64.b64encode(prefix).decode(),
            "range_end": base64.b64encode(bytes(end)).decode(),
            "keys_only": True,
        },
    )
    return [base64.b64decode(kv["key"]) for kv in answer.get("kvs", [])]
