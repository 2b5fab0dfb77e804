"""Draining an offline backlog: a printer holding N unsynced documents, the chain comes back.

Setup (not timed): a training printer's journal is filled with N invoices
(in process, through the real firmware), then the printer runs as its own
process on a pty and syncd runs against a chain URL where nothing listens
yet. Timed from the chain's ready line: the first document committed on
the chain (polled on the chain), and every document committed *and*
acknowledged on the printer (syncd's status of the printer's STATUS).
syncd's peak RSS is VmHWM from /proc. The raw single-core Ed25519 verify
rate is measured in the same run as the ceiling.

    python bench/drain.py [--documents 100000]
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ceilings import ed25519_verify_rate
from device.app import open_device
from device.limits import Limits
from hostsim.audit import admin_token
from tests.helpers import spawn

INVOICE = {
    "buyer": {"name": "ACME Trading", "tax_id": "91350100M000100Y43"},
    "items": [{"name": "Green tea 250g", "quantity": "2", "unit_price": 4500, "tax_rate_bp": 1300}],
}


def get(url: str, token: str | None = None) -> Any:
    request = urllib.request.Request(url)
    if token is not None:  # a device's ledger needs a reader's credential (the auditor's)
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def fill_journal(state: Path, count: int) -> str:
    fw = open_device(
        state, training=True, limits=Limits(offline_seconds=10**9, offline_amount=10**15)
    )
    done = 0
    while done < count:
        for _ in range(min(2000, count - done)):
            fw.issue(INVOICE)
        done += len(fw.commit_pending().documents)
    device_id = fw.settings.device_id
    fw.close()  # releases the state lock too: the printer process opens this state next
    return device_id


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=100_000)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument(
        "--chain-workers", type=int, default=None, help="chain validation processes"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="taxctl-bench-drain-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        device_id = fill_journal(root / "printer", args.documents)
        fill_seconds = time.perf_counter() - t0
        verify_rate = ed25519_verify_rate(2.0)
        port = free_port()
        chain_url = f"http://127.0.0.1:{port}"
        link = root / "printer.tty"
        printer = spawn(["device", "run", "--state", str(root / "printer"), "--link", str(link)])
        syncd = spawn(
            [
                "syncd",
                "run",
                "--state",
                str(root / "syncd"),
                "--device",
                str(link),
                "--chain",
                chain_url,
                "--api",
                "127.0.0.1:0",
                "--log-level",
                "warning",
            ],
            stderr=root / "syncd.log",
        )
        api = syncd.ready["url"]
        time.sleep(1.0)  # syncd has met the printer and found the chain down
        chain = None
        try:
            chain = spawn(
                [
                    "hostsim",
                    "chain",
                    "--data",
                    str(root / "chain"),
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--training",
                ]
                + ([] if args.chain_workers is None else ["--workers", str(args.chain_workers)]),
                stderr=root / "chain.log",
            )
            up = time.perf_counter()
            first = None
            deadline = up + args.timeout
            synced = 0
            while time.perf_counter() < deadline:
                now = time.perf_counter()
                if first is None:
                    try:
                        token = admin_token(root / "chain")
                        info = get(f"{chain_url}/v1/devices/{device_id}", token)
                        if info["last_counter"] > 0:
                            first = now - up
                    except OSError:
                        pass
                synced = get(f"{api}/v1/status")["devices"][0].get("synced_through", 0)
                if synced >= args.documents:
                    break
                time.sleep(0.02 if first is None else 0.1)
            drained = time.perf_counter() - up
            peak = rss_peak_kib(syncd.proc.pid)
        finally:
            syncd.stop()
            printer.stop()
            if chain is not None:
                chain.stop()
    print(
        json.dumps(
            {
                "benchmark": "drain",
                "documents": args.documents,
                "acknowledged": synced,
                "fill_seconds": round(fill_seconds, 1),
                "first_commit_s": None if first is None else round(first, 3),
                "drain_s": round(drained, 2),
                "documents_per_s": round(synced / drained),
                "syncd_peak_rss_mib": round(peak / 1024, 1),
                "ceiling_ed25519_verify_per_s_1core": round(verify_rate),
            }
        )
    )


if __name__ == "__main__":
    main()
