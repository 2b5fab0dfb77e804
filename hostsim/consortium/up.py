"""`taxctl hostsim consortium up|init`: an etcd cluster and the node processes on loopback.

`init` runs the setup ceremony (each node's key in its own directory, the
bureau's consortium over them); `up` also starts the etcd members (each its
own data directory, auto-compaction and a backend quota set) and one
`taxctl hostsim chain node` process per node, then prints one JSON ready
line. The ports are chosen once and kept in `cluster.json`, so a restart
with the same directory finds the same cluster at the same URLs. SIGTERM
stops the nodes, then the etcd members.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hostsim.chain.quorum import node_ids
from hostsim.consortium import identity
from hostsim.consortium.etcd import Etcd, EtcdError, wait_ready

CLUSTER_FILE = "cluster.json"
READY_TIMEOUT = 60.0
QUOTA_BYTES = 2 * 1024**3
MAX_REQUEST_BYTES = 8 * 1024 * 1024
AUTO_COMPACTION_RETENTION = "100000"  # revisions; the nodes compact to their watermark too


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "consortium",
        help="run a consortium on this machine: etcd members and node processes",
        description="Set up and run a consortium on loopback: etcd members for ordering,"
        " one node process per organisation (docs/consortium.md).",
    )
    actions = parser.add_subparsers(dest="consortium_command", metavar="ACTION", required=True)
    for name, helptext in (
        ("up", "start etcd and the nodes; print one JSON ready line; SIGTERM stops all"),
        ("init", "only the setup ceremony: node keys and the bureau's consortium object"),
    ):
        action = actions.add_parser(name, help=helptext)
        action.add_argument("--dir", required=True, type=Path, help="where everything lives")
        action.add_argument("--nodes", type=int, default=4, help="consortium nodes (default 4)")
        action.add_argument("--training", action="store_true", help="a training consortium")
        if name == "up":
            action.add_argument(
                "--etcd-members", type=int, default=3, help="etcd members (default 3)"
            )
            action.add_argument("--etcd-bin", default=None, help="the etcd binary (default: PATH)")
        action.set_defaults(func=_run_up if name == "up" else _run_init)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cluster_plan(root: Path, nodes: int, members: int) -> dict[str, Any]:
    """Names and ports, made once and kept: etcd's membership records its peer URLs."""
    path = root / CLUSTER_FILE
    if path.exists():
        plan: dict[str, Any] = json.loads(path.read_text())
        if len(plan["nodes"]) != nodes or len(plan["etcd"]) != members:
            raise ValueError(
                f"{root} holds {len(plan['nodes'])} nodes and {len(plan['etcd'])} etcd members;"
                " start it with those counts"
            )
        return plan
    plan = {
        "token": f"taxctl-{os.urandom(4).hex()}",
        "etcd": [
            {"name": f"etcd{i}", "client": _free_port(), "peer": _free_port()}
            for i in range(1, members + 1)
        ],
        "nodes": [{"id": n, "port": _free_port()} for n in node_ids(nodes)],
    }
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plan, indent=1))
    return plan


def etcd_args(binary: str, root: Path, plan: dict[str, Any], member: dict[str, Any]) -> list[str]:
    cluster = ",".join(f"{m['name']}=http://127.0.0.1:{m['peer']}" for m in plan["etcd"])
    client = f"http://127.0.0.1:{member['client']}"
    peer = f"http://127.0.0.1:{member['peer']}"
    return [
        binary,
        "--name", member["name"],
        "--data-dir", str(root / "etcd" / member["name"]),
        "--listen-client-urls", client,
        "--advertise-client-urls", client,
        "--listen-peer-urls", peer,
        "--initial-advertise-peer-urls", peer,
        "--initial-cluster", cluster,
        "--initial-cluster-token", plan["token"],
        "--initial-cluster-state", "new",
        "--auto-compaction-mode", "revision",
        "--auto-compaction-retention", AUTO_COMPACTION_RETENTION,
        "--quota-backend-bytes", str(QUOTA_BYTES),
        "--max-request-bytes", str(MAX_REQUEST_BYTES),
        # loopback: a lost leader is noticed in half a second, not the WAN default's 1 s
        "--heartbeat-interval", "50",
        "--election-timeout", "500",
        "--logger", "zap",
        "--log-level", "warn",
    ]  # fmt: skip


@dataclass
class Started:
    name: str
    proc: subprocess.Popen[str]
    url: str


def _ready_line(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any] | None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        readable, _, _ = select.select([proc.stdout], [], [], 0.1)
        if readable:
            line = proc.stdout.readline()
            if not line:
                return None
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, dict) and data.get("event") == "ready":
                return data
    return None


def start_etcd(binary: str, root: Path, plan: dict[str, Any]) -> list[Started]:
    return [start_member(binary, root, plan, member) for member in plan["etcd"]]


def start_member(binary: str, root: Path, plan: dict[str, Any], member: dict[str, Any]) -> Started:
    """One etcd member (again, after a kill: its data directory makes it rejoin)."""
    (root / "logs").mkdir(parents=True, exist_ok=True)
    with open(root / "logs" / f"{member['name']}.log", "ab") as err:
        proc = subprocess.Popen(
            etcd_args(binary, root, plan, member),
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
            text=True,
        )
    return Started(member["name"], proc, f"http://127.0.0.1:{member['client']}")


def sys_executable() -> list[str]:
    """The command that runs taxctl with this interpreter."""
    return [sys.executable, "-m", "taxctl"]


def start_node(
    root: Path,
    node: dict[str, Any],
    etcd_urls: list[str],
    training: bool,
    extra: tuple[str, ...] = (),
) -> Started:
    args = [
        *sys_executable(), "hostsim", "chain", "node",
        "--id", node["id"],
        "--data", str(node.get("data") or root / "nodes" / node["id"]),
        "--etcd", ",".join(etcd_urls),
        "--listen", f"127.0.0.1:{node['port']}",
        *(["--training"] if training else []),
        *extra,
    ]  # fmt: skip
    with open(root / "logs" / f"{node['id']}.log", "ab") as err:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True
        )
    ready = _ready_line(proc, READY_TIMEOUT)
    if ready is None:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"node {node['id']} did not start; see {root / 'logs'}")
    return Started(node["id"], proc, str(ready["url"]))


def stop(children: list[Started], timeout: float = 15.0) -> None:
    for child in children:
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait()


def etcd_leader(members: list[Started]) -> Started | None:
    """The running member that is the Raft leader now, or None."""
    for member in members:
        if member.proc.poll() is not None:
            continue
        request = urllib.request.Request(
            f"{member.url}/v3/maintenance/status", data=b"{}", method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                status = json.loads(resp.read())
        except (OSError, ValueError):
            continue
        header = status.get("header") if isinstance(status, dict) else None
        if isinstance(header, dict) and header.get("member_id") == status.get("leader"):
            return member
    return None


def stop_etcd(members: list[Started]) -> None:
    """Followers first, one at a time, then the leader: stopped all at once, a leader
    spends seconds trying to hand its leadership to members that are going too."""
    leader = etcd_leader(members)
    for member in [m for m in members if m is not leader] + ([leader] if leader else []):
        stop([member])


def up(root: Path, nodes: int, members: int, training: bool, binary: str) -> int:
    plan = cluster_plan(root, nodes, members)
    identity.ceremony(root, [n["id"] for n in plan["nodes"]], training)
    etcd = start_etcd(binary, root, plan)
    started: list[Started] = []
    try:
        urls = [m.url for m in etcd]
        asyncio.run(_wait_etcd(urls))
        for node in plan["nodes"]:
            started.append(start_node(root, node, urls, training))
        ready = {
            "event": "ready",
            "nodes": [{"id": s.name, "url": s.url, "pid": s.proc.pid} for s in started],
            "etcd": [{"name": m.name, "client_url": m.url, "pid": m.proc.pid} for m in etcd],
        }
        print(json.dumps(ready), flush=True)
        stopping = False

        def on_signal(signum: int, frame: Any) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        while not stopping:
            time.sleep(0.2)
    finally:
        stop(started)
        stop_etcd(etcd)
    return 0


async def _wait_etcd(urls: list[str]) -> None:
    client = Etcd(urls)
    try:
        await wait_ready(client, 30.0)
    finally:
        await client.close()


def _run_up(args: argparse.Namespace) -> int:
    binary = args.etcd_bin or shutil.which("etcd") or "/usr/bin/etcd"
    if not Path(binary).exists():
        print(f"taxctl hostsim consortium up: no etcd binary at {binary}", file=sys.stderr)
        return 2
    try:
        return up(args.dir, args.nodes, args.etcd_members, args.training, binary)
    except (ValueError, OSError, RuntimeError, EtcdError, identity.SetupError) as exc:
        print(f"taxctl hostsim consortium up: {exc}", file=sys.stderr)
        return 2


def _run_init(args: argparse.Namespace) -> int:
    try:
        consortium = identity.ceremony(args.dir, node_ids(args.nodes), args.training)
    except (ValueError, OSError, identity.SetupError) as exc:
        print(f"taxctl hostsim consortium init: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"chain_id": consortium.chain_id, "nodes": sorted(consortium.nodes)}))
    return 0
