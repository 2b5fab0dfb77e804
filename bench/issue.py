"""Invoices per second through a pty, with 1 and with 32 requests in flight.

The device runs as its own process (training mode, limits out of the
way); this process is the host. Raw ceilings are measured in the same run:
Ed25519 signs/s and fsync'd SQLite commits/s on the journal's filesystem.
Group commit is what lets 32 in flight beat the commit ceiling.

Both figures drift by 10-20 % from minute to minute on a shared virtual
machine, so the measurement is done in rounds: each round measures the
commit ceiling, then every concurrency. Each run is compared with the
ceiling of its own round, and the summary gives the median over rounds.

A last run puts the journal on slow fiscal memory (`device run
--storage-latency 2`: 2 ms added to every commit): one commit at a time
cannot pass 1/latency (500/s), so what 32 in flight reach beyond that is
group commit amortising the latency (target: at least 500/s).

Each run also reports what the device says it did (STATUS `since_start`):
its journal commits and documents per commit, which is group commit at
work, and the CPU per invoice of the device and of this host process (from
/proc, where there is one), which is where the time goes.

    python bench/issue.py [--seconds 5] [--concurrency 1,32] [--rounds 3]
                          [--storage-latency 2] [--storage-concurrency 1,32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ceilings import ed25519_sign_rate, fsync_commit_rate
from device.client import DeviceClient

REQUEST = {
    "buyer": {"name": "ACME Trading", "tax_id": "91350100M000100Y43"},
    "items": [
        {"name": "Green tea 250 g", "quantity": "2", "unit_price": 3500, "tax_rate_bp": 1300},
        {"name": "Delivery", "quantity": "1", "unit_price": 800, "tax_rate_bp": 900},
    ],
}


def start_device(state: Path, link: Path, storage_latency_ms: float = 0.0) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "taxctl",
            "device",
            "run",
            "--state",
            str(state),
            "--link",
            str(link),
            "--training",
            "--offline-amount",
            str(10**15),
            "--offline-seconds",
            str(10**9),
            "--storage-latency",
            str(storage_latency_ms),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError("device did not start")
    return proc


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process so far, from /proc (None where there is none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(link: Path, concurrency: int, seconds: float, device_pid: int) -> dict[str, Any]:
    client = await DeviceClient.open(str(link), max_in_flight=concurrency)
    try:
        for _ in range(50):  # warm up
            await client.issue(REQUEST)
        before = (await client.status())["since_start"]
        device_cpu, host_cpu = cpu_seconds(device_pid), cpu_seconds(os.getpid())
        latencies: list[float] = []
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                await client.issue(REQUEST)
                latencies.append(time.perf_counter() - t0)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        device_cpu = _used(device_cpu, cpu_seconds(device_pid), len(latencies))
        host_cpu = _used(host_cpu, cpu_seconds(os.getpid()), len(latencies))
        after = (await client.status())["since_start"]
        commits = after["document_commits"] - before["document_commits"]
        documents = after["documents"] - before["documents"]
        latencies.sort()
        return {
            "in_flight": concurrency,
            "invoices": len(latencies),
            "invoices_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(latencies[len(latencies) // 2] * 1000, 3),
            "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 3),
            "retransmissions": client.stats.retransmissions,
            # Group commit at work: how often the device fsynced, and for how many each time.
            "device_documents": documents,
            "device_commits": commits,
            "device_commits_per_s": round(commits / elapsed, 1),
            "documents_per_commit": round(documents / commits, 2) if commits else None,
            # Where the time goes: CPU per invoice of the device and of this host process.
            "device_cpu_us_per_invoice": device_cpu,
            "host_cpu_us_per_invoice": host_cpu,
        }
    finally:
        await client.close()


def _used(start: float | None, end: float | None, invoices: int) -> float | None:
    if start is None or end is None or not invoices:
        return None
    return round((end - start) / invoices * 1e6, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--storage-latency", type=float, default=2.0, help="ms per commit of the slow run (0: none)"
    )
    parser.add_argument("--storage-concurrency", default="1,32")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sign_rate = ed25519_sign_rate()
        device = start_device(root / "state", root / "tty")
        try:
            for _ in range(max(1, args.rounds)):
                commit_rate = fsync_commit_rate(root)
                runs = [
                    asyncio.run(measure(root / "tty", c, args.seconds, device.pid)) for c in levels
                ]
                for run in runs:
                    run["vs_fsync_commits"] = round(run["invoices_per_s"] / commit_rate, 2)
                rounds.append({"fsync_commits_per_s": round(commit_rate, 1), "runs": runs})
        finally:
            device.send_signal(signal.SIGTERM)
            device.wait(timeout=30)
        slow = None
        if args.storage_latency > 0:
            slow = slow_storage(root, args.storage_latency, args.storage_concurrency, args.seconds)
    summary = {}
    for index, level in enumerate(levels):
        mine = [r["runs"][index] for r in rounds]
        summary[str(level)] = {
            "median_invoices_per_s": statistics.median(r["invoices_per_s"] for r in mine),
            "median_vs_fsync_commits": statistics.median(r["vs_fsync_commits"] for r in mine),
            "median_vs_ed25519_signs": round(
                statistics.median(r["invoices_per_s"] for r in mine) / sign_rate, 3
            ),
            "median_documents_per_commit": _median(r["documents_per_commit"] for r in mine),
            "median_device_cpu_us_per_invoice": _median(
                r["device_cpu_us_per_invoice"] for r in mine
            ),
            "median_host_cpu_us_per_invoice": _median(r["host_cpu_us_per_invoice"] for r in mine),
        }
    print(
        json.dumps(
            {
                "benchmark": "issue",
                "rounds": rounds,
                "median_by_in_flight": summary,
                "ceilings": {
                    "ed25519_signs_per_s": round(sign_rate, 1),
                    "median_fsync_commits_per_s": statistics.median(
                        r["fsync_commits_per_s"] for r in rounds
                    ),
                },
                "slow_storage": slow,
                "cpus": os.cpu_count(),
            },
            indent=2,
        )
    )


def slow_storage(root: Path, latency_ms: float, levels: str, seconds: float) -> dict[str, Any]:
    """The same measurement against a journal whose every commit takes `latency_ms` more."""
    device = start_device(root / "slow-state", root / "slow-tty", latency_ms)
    try:
        runs = [
            asyncio.run(measure(root / "slow-tty", int(c), seconds, device.pid))
            for c in levels.split(",")
        ]
    finally:
        device.send_signal(signal.SIGTERM)
        device.wait(timeout=30)
    one_at_a_time = 1000 / latency_ms  # commits/s if every invoice waited for its own
    for run in runs:
        run["vs_one_commit_each"] = round(float(run["invoices_per_s"] or 0) / one_at_a_time, 2)
    return {
        "latency_ms": latency_ms,
        "ceiling_one_commit_each_per_s": round(one_at_a_time, 1),
        "runs": runs,
    }


def _median(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


if __name__ == "__main__":
    main()
