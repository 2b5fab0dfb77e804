"""Invoices per second through a pty, with 1 and with 32 requests in flight.

The device runs as its own process (training mode, limits out of the
way); this process is the host. Raw ceilings are measured in the same run:
Ed25519 signs/s and fsync'd SQLite commits/s on the journal's filesystem.
Group commit is what lets 32 in flight beat the commit ceiling.

    python bench/issue.py [--seconds 5] [--concurrency 1,32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def start_device(state: Path, link: Path) -> subprocess.Popen[str]:
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


async def measure(link: Path, concurrency: int, seconds: float) -> dict[str, float]:
    client = await DeviceClient.open(str(link), max_in_flight=concurrency)
    try:
        for _ in range(50):  # warm up
            await client.issue(REQUEST)
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
        latencies.sort()
        return {
            "in_flight": concurrency,
            "invoices": len(latencies),
            "invoices_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(latencies[len(latencies) // 2] * 1000, 3),
            "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 3),
            "retransmissions": client.stats.retransmissions,
        }
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", default="1,32")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sign_rate = ed25519_sign_rate()
        commit_rate = fsync_commit_rate(root)
        device = start_device(root / "state", root / "tty")
        try:
            runs = [
                asyncio.run(measure(root / "tty", int(c), args.seconds))
                for c in args.concurrency.split(",")
            ]
        finally:
            device.send_signal(signal.SIGTERM)
            device.wait(timeout=30)
    best = max(runs, key=lambda r: r["invoices_per_s"])
    print(
        json.dumps(
            {
                "benchmark": "issue",
                "runs": runs,
                "ceilings": {
                    "ed25519_signs_per_s": round(sign_rate, 1),
                    "fsync_commits_per_s": round(commit_rate, 1),
                },
                "ratios": {
                    "best_vs_fsync_commits": round(best["invoices_per_s"] / commit_rate, 2),
                    "best_vs_ed25519_signs": round(best["invoices_per_s"] / sign_rate, 3),
                },
                "cpus": os.cpu_count(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
