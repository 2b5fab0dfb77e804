"""Consortium throughput: 4 node processes ordering through 3 etcd members, next to the
in-process chain, measured in the same run on the same documents' kind.

D training devices (real firmware, in process) sign their documents up front;
one submitter per device posts them in order in batches of 500 (CBOR, compact
receipts, as syncd does), all devices at once — to the in-process chain, then
to the consortium with device i sending to node i mod 4. Figures: documents
committed (receipt received) per second; CPU seconds each node process spent
per document (user + system from /proc); and, as the ceiling of the ordering
itself, etcd's own rate of create-if-absent writes of one batch-sized value
(what a node writes per batch), concurrently from D writers, times the batch.

    python bench/consortium.py [--devices 8] [--per-device 2500] [--batch 500] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import chain as chain_bench
from bench.chain import COMPACT, make_documents
from hostsim.consortium import identity, up
from hostsim.consortium.etcd import Etcd
from tests.helpers import spawn

Device = tuple[bytes, list[bytes], list[bytes]]
# compact receipts as syncd asks, and the longest wait the API allows, so a batch is
# answered committed rather than pending while the chain is busy
PARAMS = {**COMPACT, "wait": "30"}


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its live children (the chain's validation
    workers), in seconds."""
    total = 0.0
    for one in [pid, *_children(pid)]:
        try:
            with open(f"/proc/{one}/stat") as stat:
                fields = stat.read().rsplit(") ", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


async def drive(urls: list[str], devices: list[Device], batch: int) -> dict[str, float]:
    """bench/chain.py's load, waiting longer for finality (a block needs 2f+1 nodes)."""
    return await chain_bench.drive(urls, devices, batch, params=PARAMS, timeout=300)


async def etcd_ceiling(urls: list[str], writers: int, value_bytes: int, seconds: float) -> float:
    """Create-if-absent writes per second of `value_bytes` each, from `writers` at once."""
    client = Etcd(urls, timeout=30)
    value = os.urandom(value_bytes)
    done = 0
    deadline = time.perf_counter() + seconds

    async def writer(w: int) -> None:
        nonlocal done
        n = 0
        while time.perf_counter() < deadline:
            await client.create(f"/bench/{w}/{n}".encode(), value)
            n += 1
            done += 1

    started = time.perf_counter()
    try:
        await asyncio.gather(*(writer(w) for w in range(writers)))
    finally:
        await client.close()
    return done / (time.perf_counter() - started)


def in_process(root: Path, devices: list[Device], batch: int) -> dict[str, Any]:
    command = ["hostsim", "chain", "--data", str(root / "embedded"), "--listen", "127.0.0.1:0"]
    chain = spawn([*command, "--training"])
    try:
        before = cpu_seconds(chain.proc.pid)
        figures = asyncio.run(drive([chain.ready["url"]], devices, batch))
        cpu = cpu_seconds(chain.proc.pid) - before
    finally:
        chain.stop()
    return _figures(figures, {"chain": cpu})


def consortium(root: Path, devices: list[Device], batch: int, etcd_bin: str) -> dict[str, Any]:
    base = root / "consortium"
    plan = up.cluster_plan(base, 4, 3)
    identity.ceremony(base, [n["id"] for n in plan["nodes"]], training=True)
    members = up.start_etcd(etcd_bin, base, plan)
    nodes: list[up.Started] = []
    try:
        urls = [m.url for m in members]
        asyncio.run(up._wait_etcd(urls))
        nodes = [up.start_node(base, n, urls, training=True) for n in plan["nodes"]]
        before = {n.name: cpu_seconds(n.proc.pid) for n in nodes}
        figures = asyncio.run(drive([n.url for n in nodes], devices, batch))
        cpu = {n.name: cpu_seconds(n.proc.pid) - before[n.name] for n in nodes}
        value = sum(len(d) for d in devices[0][2][:batch])
        ceiling = asyncio.run(etcd_ceiling(urls, len(devices), value, 3.0))
    finally:
        up.stop(nodes)
        up.stop_etcd(members)
    out = _figures(figures, cpu)
    out["etcd_batch_writes_per_s"] = round(ceiling, 1)
    out["etcd_batch_value_bytes"] = value
    out["ceiling_docs_per_s_from_etcd"] = round(ceiling * batch)
    return out


def _figures(figures: dict[str, float], cpu: dict[str, float]) -> dict[str, Any]:
    docs = max(1, int(figures["committed"]))
    return {
        "documents": int(figures["committed"]),
        "seconds": round(figures["seconds"], 3),
        "committed_per_s": round(figures["committed"] / figures["seconds"]),
        "batch_p50_ms": round(figures["batch_p50_ms"], 1),
        "batch_p99_ms": round(figures["batch_p99_ms"], 1),
        "cpu_ms_per_document": {name: round(1000 * s / docs, 3) for name, s in cpu.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--per-device", type=int, default=2500)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--etcd-bin", default=shutil.which("etcd") or "/usr/bin/etcd")
    parser.add_argument("--quick", action="store_true", help="2 devices x 500 (for a test)")
    args = parser.parse_args()
    if args.quick:
        args.devices, args.per_device = 2, 500
    with tempfile.TemporaryDirectory(prefix="taxctl-bench-consortium-") as tmp:
        root = Path(tmp)
        devices = make_documents(root, args.devices, args.per_device)
        embedded = in_process(root, devices, args.batch)
        # the same documents again: a fresh consortium has never seen them
        distributed = consortium(root, devices, args.batch, args.etcd_bin)
    print(
        json.dumps(
            {
                "benchmark": "consortium",
                "devices": args.devices,
                "batch": args.batch,
                "nodes": 4,
                "etcd_members": 3,
                "in_process": embedded,
                "consortium": distributed,
                "ratio_consortium_to_in_process": round(
                    distributed["committed_per_s"] / max(1, embedded["committed_per_s"]), 3
                ),
            }
        )
    )


if __name__ == "__main__":
    main()
