"""End to end, steady state: tills -> syncd's POS API -> printer (pty) -> syncd -> chain.

A training chain (4 nodes), printers on ptys and syncd run as their own
processes, as in production. After a warm-up, the POS simulator's tills
sell flat out (or at --rate) for --seconds; measured over that window:
invoices issued per second (answered to the tills), p50/p99/max issue
latency, and documents synced per second (acknowledged by the chain and
marked synced on the printers, up to the moment the last one of the window
is synced). The raw ceilings are measured in the same run, before the
shop starts: Ed25519 sign and verify (one core), fsync'd SQLite commits in
the printer's state directory, and raw pty bytes/s. And the printer alone
at the same number in flight (bench/issue.py's measurement, a host on its
pty and nothing else), so that what the POS path costs is a ratio from the
same run: issued_per_s / printer_alone_per_s. Where the time goes: the CPU
per sale of each process (chain, printer, syncd, the tills) over the window.

    python bench/e2e.py [--seconds 20] [--devices 1] [--concurrency 16] [--rate 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ceilings import (
    ed25519_sign_rate,
    ed25519_verify_rate,
    fsync_commit_rate,
    pty_bytes_rate,
)
from bench.issue import _used, cpu_seconds, measure, start_device
from hostsim.pos.mix import MixSettings
from hostsim.pos.till import Tills, TillSettings
from taxctl_base.processes import Child, all_online, wait_status

# Offline limits out of the way: the window measures throughput, not a shop's limits.
TRAINING = ["--training", "--offline-amount", str(10**15), "--offline-seconds", str(10**9)]


def start_shop(root: Path, devices: int) -> tuple[list[Child], str, list[str]]:
    logs = root / "logs"
    logs.mkdir(parents=True)
    children: list[Child] = []
    chain_args = ["hostsim", "chain", "--data", str(root / "chain"), "--listen", "127.0.0.1:0"]
    chain = Child("chain", [*chain_args, "--training"], logs / "chain.log")
    children.append(chain)
    ids = []
    syncd_args = ["syncd", "run", "--state", str(root / "syncd"), "--chain", chain.ready["url"]]
    for n in range(1, devices + 1):
        tty = root / f"device-{n}.tty"
        device = Child(
            f"device-{n}",
            ["device", "run", "--state", str(root / f"device-{n}"), "--link", str(tty), *TRAINING],
            logs / f"device-{n}.log",
        )
        children.append(device)
        ids.append(device.ready["device_id"])
        syncd_args += ["--device", str(tty)]
    syncd_args += ["--api", "127.0.0.1:0", "--log-level", "warning"]
    syncd = Child("syncd", syncd_args, logs / "syncd.log")
    children.append(syncd)
    api = syncd.ready["url"]
    wait_status(api, all_online, "printers online")
    return children, api, ids


def printer_alone(root: Path, concurrency: int, seconds: float) -> float:
    """Invoices/s of a printer on its pty with `concurrency` in flight and no syncd."""
    root.mkdir()
    device = start_device(root / "state", root / "tty")
    try:
        run = asyncio.run(measure(root / "tty", concurrency, seconds, device.pid))
    finally:
        device.send_signal(signal.SIGTERM)
        device.wait(timeout=30)
    return float(run["invoices_per_s"])


def sell(api: str, ids: list[str], count: int, concurrency: int, rate: float, seed: int) -> Any:
    settings = TillSettings(
        api=api,
        count=count,
        concurrency=concurrency,
        rate=rate,
        seed=seed,
        devices=tuple(ids),
        mix=MixSettings(credit_share=0.02, retry_share=0.0),
    )
    return asyncio.run(Tills(settings).run())


def wait_synced(api: str, targets: dict[str, int], timeout: float) -> float:
    """perf_counter() once every printer's synced_through reaches its target counter."""
    wait_status(
        api,
        lambda status: all(
            d.get("synced_through", 0) >= targets[d["device_id"]] for d in status["devices"]
        ),
        "every sale synced",
        timeout,
        interval=0.02,
    )
    return time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=16, help="tills selling at once")
    parser.add_argument("--rate", type=float, default=0.0, help="sales/s (0: flat out)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="taxctl-bench-e2e-") as tmp:
        root = Path(tmp)
        ceilings = {
            "ed25519_sign_per_s": round(ed25519_sign_rate()),
            "ed25519_verify_per_s": round(ed25519_verify_rate()),
            "fsync_commit_per_s": round(fsync_commit_rate(root)),
            "pty_bytes_per_s": round(pty_bytes_rate()),
        }
        alone = printer_alone(root / "alone", args.concurrency, min(args.seconds, 5.0))
        children, api, ids = start_shop(root, args.devices)
        try:
            warm = sell(api, ids, 200, args.concurrency, 0.0, seed=1)
            # Flat out, the window is a count sized from the warm-up's pace.
            pace = args.rate or len(warm.acknowledged) / warm.elapsed
            count = max(int(pace * args.seconds), 100)
            pids = {child.name: child.proc.pid for child in children}
            pids["tills"] = os.getpid()
            cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            start = time.perf_counter()
            report = sell(api, ids, count, args.concurrency, args.rate, seed=2)
            issued_at = time.perf_counter()
            cpu = {
                name: _used(cpu_before[name], cpu_seconds(pid), len(report.acknowledged))
                for name, pid in pids.items()
            }
            targets = {device_id: 0 for device_id in ids}
            for ack in warm.acknowledged + report.acknowledged:
                targets[ack.device_id] = max(targets[ack.device_id], ack.counter)
            synced_at = wait_synced(api, targets, timeout=300)
        finally:
            for child in reversed(children):
                child.stop()
        summary = report.summary()
        acknowledged = len(report.acknowledged)
        print(
            json.dumps(
                {
                    "benchmark": "e2e",
                    "devices": args.devices,
                    "concurrency": args.concurrency,
                    "rate_asked": args.rate,
                    "sales": summary["sales"],
                    "refused": summary["refused"],
                    "issued_per_s": round(acknowledged / (issued_at - start), 1),
                    "synced_per_s": round(acknowledged / (synced_at - start), 1),
                    "last_synced_after_last_issued_s": round(synced_at - issued_at, 3),
                    "issue_latency_ms": summary["latency_ms"],
                    # Where the time goes: CPU per sale of each process (µs), in the window.
                    "cpu_us_per_sale": cpu,
                    "printer_alone_per_s": alone,
                    "vs_printer_alone": round(acknowledged / (issued_at - start) / alone, 3),
                    "ceilings": ceilings,
                }
            )
        )


if __name__ == "__main__":
    main()
