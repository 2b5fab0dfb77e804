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

With `--load wrk` the sales come from wrk (bench/wrkload.py) instead of the Python
tills: the same path, without the load generator's own CPU taking the cores the
system needs (flat out only; the tills' figures stay the default).

    python bench/e2e.py [--seconds 20] [--devices 1] [--concurrency 16] [--rate 0]
                        [--load tills|wrk]
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

from bench import wrkload
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


def cpu_now(pids: dict[str, int]) -> dict[str, float | None]:
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


def tills_window(
    api: str, ids: list[str], args: argparse.Namespace, pids: dict[str, int]
) -> dict[str, Any]:
    """The measured window with the Python tills: sales, figures and what must be synced."""
    warm = sell(api, ids, 200, args.concurrency, 0.0, seed=1)
    # Flat out, the window is a count sized from the warm-up's pace.
    pace = args.rate or len(warm.acknowledged) / warm.elapsed
    count = max(int(pace * args.seconds), 100)
    cpu_before = cpu_now(pids)
    load_before = cpu_seconds(os.getpid())
    start = time.perf_counter()
    report = sell(api, ids, count, args.concurrency, args.rate, seed=2)
    elapsed = time.perf_counter() - start
    load_after = cpu_seconds(os.getpid())
    targets = {device_id: 0 for device_id in ids}
    for ack in warm.acknowledged + report.acknowledged:
        targets[ack.device_id] = max(targets[ack.device_id], ack.counter)
    summary = report.summary()
    load_cpu = None if load_before is None or load_after is None else load_after - load_before
    return {
        "cpu_before": cpu_before,
        "warm_up": len(warm.acknowledged),
        "start": start,
        "elapsed": elapsed,
        "acknowledged": len(report.acknowledged),
        "sales": summary["sales"],
        "refused": summary["refused"],
        "latency_ms": summary["latency_ms"],
        "targets": targets,
        "load_cpu_s": load_cpu,
    }


def wrk_window(
    api: str, ids: list[str], args: argparse.Namespace, pids: dict[str, int], root: Path
) -> dict[str, Any]:
    """The measured window with wrk as the tills (flat out, `--seconds` long)."""
    warm = sell(api, ids, 200, args.concurrency, 0.0, seed=1)  # the tills' warm-up
    cpu_before = cpu_now(pids)
    start = time.perf_counter()
    figures = wrkload.sell(api, ids, args.seconds, args.concurrency, root)
    elapsed = figures["duration_us"] / 1e6
    statuses = figures["statuses"]
    refused = {code: n for code, n in statuses.items() if code != "201"}
    return {
        "cpu_before": cpu_before,
        "warm_up": len(warm.acknowledged),
        "start": start,
        "elapsed": elapsed,
        "acknowledged": statuses.get("201", 0),
        "sales": figures["requests"],
        "refused": refused,
        "latency_ms": {
            name: round(figures[f"{name}_us"] / 1000, 2) for name in ("p50", "p90", "p99", "max")
        },
        "targets": {device_id: figures["highest"].get(device_id, 0) for device_id in ids},
        "distinct_documents": figures["distinct_documents"],
        "load_cpu_s": figures["cpu_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=16, help="tills selling at once")
    parser.add_argument("--rate", type=float, default=0.0, help="sales/s (0: flat out)")
    parser.add_argument("--load", choices=("tills", "wrk"), default="tills", help="who sells")
    args = parser.parse_args()
    if args.load == "wrk" and (args.rate or wrkload.available() is None):
        parser.error("--load wrk sells flat out and needs wrk installed (apt install wrk)")

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
            pids = {child.name: child.proc.pid for child in children}
            if args.load == "wrk":
                run = wrk_window(api, ids, args, pids, root)
            else:
                run = tills_window(api, ids, args, pids)
            after = cpu_now(pids)
            cpu = {
                name: _used(run["cpu_before"][name], after[name], run["acknowledged"])
                for name in pids
            }
            cpu[args.load] = _used(0.0, run["load_cpu_s"], run["acknowledged"])
            synced_at = wait_synced(api, run["targets"], timeout=300)
        finally:
            for child in reversed(children):
                child.stop()
        print(json.dumps(report(args, run, cpu, synced_at, alone, ceilings)))


def report(
    args: argparse.Namespace,
    run: dict[str, Any],
    cpu: dict[str, float | None],
    synced_at: float,
    alone: float,
    ceilings: dict[str, int],
) -> dict[str, Any]:
    acknowledged, start, elapsed = run["acknowledged"], run["start"], run["elapsed"]
    issued_per_s = acknowledged / elapsed
    return {
        "benchmark": "e2e",
        "load": args.load,
        "devices": args.devices,
        "concurrency": args.concurrency,
        "rate_asked": args.rate,
        "warm_up_acknowledged": run["warm_up"],
        "sales": run["sales"],
        "acknowledged": acknowledged,
        "refused": run["refused"],
        "issued_per_s": round(issued_per_s, 1),
        "synced_per_s": round(acknowledged / (synced_at - start), 1),
        "last_synced_after_last_issued_s": round(synced_at - start - elapsed, 3),
        "issue_latency_ms": run["latency_ms"],
        "last_counters": run["targets"],
        # wrk's: the documents its 201 answers named, each counted once
        "distinct_documents": run.get("distinct_documents"),
        # Where the time goes: CPU per sale of each process (us), in the window.
        "cpu_us_per_sale": cpu,
        "printer_alone_per_s": alone,
        "vs_printer_alone": round(issued_per_s / alone, 3),
        "ceilings": ceilings,
    }


if __name__ == "__main__":
    main()
