"""`taxctl demo`: the whole system on one machine, in training mode, in a minute.

Starts a consortium chain (4 nodes), an emulated printer on a virtual
serial port (pty) and the sync daemon, each as its own process, exactly as
an operator would run them; issues invoices through the POS API while the
chain is reachable, then while it is down (the printer keeps issuing,
offline), brings the chain back and shows every document landing on it
exactly once; finally verifies one invoice with the bureau (查验) as a
buyer would. Everything lives in a temporary directory unless --dir.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

READY_TIMEOUT = 30.0
SYNC_TIMEOUT = 60.0

INVOICE = {
    "buyer": {"name": "ACME Trading", "tax_id": "91350100M000100Y43"},
    "items": [
        {"name": "Green tea 250g", "quantity": "2", "unit_price": 4500, "tax_rate_bp": 1300},
        {"name": "Delivery", "quantity": "1", "unit_price": 800, "tax_rate_bp": 900},
    ],
}


def register(subparsers: Any) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="run chain, printer and sync daemon together and show an invoice's whole life",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    demo.add_argument("--dir", type=Path, help="keep everything in this directory")
    demo.add_argument("--invoices", type=int, default=3, help="invoices per phase (default 3)")
    demo.set_defaults(func=run_demo)


def read_ready(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any] | None:
    """The JSON ready line a taxctl process prints on stdout once it serves; None if
    it exits or the time runs out first. Other lines before it are passed over."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        readable, _, _ = select.select([proc.stdout], [], [], 0.1)
        if readable:
            line = proc.stdout.readline()
            if not line:
                return None
            data = json.loads(line)
            if data.get("event") == "ready":
                return dict(data)
        if proc.poll() is not None:
            return None
    return None


class Child:
    """A taxctl subprocess that prints one JSON ready line on stdout."""

    def __init__(self, name: str, args: list[str], log: Path) -> None:
        self.name = name
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "taxctl", *args],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        self.ready = self._wait_ready(log)

    def _wait_ready(self, log: Path) -> dict[str, Any]:
        ready = read_ready(self.proc, READY_TIMEOUT)
        if ready is None:
            self.stop()
            raise RuntimeError(f"the {self.name} did not start; see {log}")
        return ready

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def http(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def wait_online(api: str) -> None:
    """syncd is ready before it has met the printer: wait for the link."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        _, status = http("GET", f"{api}/v1/status")
        if all(d["state"] == "online" for d in status["devices"]):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the printer did not come online: {status['devices']}")
        time.sleep(0.1)


def wait_synced(api: str, issued: int) -> dict[str, Any]:
    deadline = time.monotonic() + SYNC_TIMEOUT
    while True:
        _, status = http("GET", f"{api}/v1/status")
        device = status["devices"][0]
        if device.get("synced_through", 0) >= issued and status["chain"]["state"] == "ok":
            return dict(status)
        if time.monotonic() > deadline:
            raise RuntimeError(f"not synced after {SYNC_TIMEOUT:.0f} s: {device}")
        time.sleep(0.2)


def run_demo(args: argparse.Namespace) -> int:
    root = args.dir or Path(tempfile.mkdtemp(prefix="taxctl-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    children: list[Child] = []
    failed = False
    say = print
    try:
        say(f"taxctl demo — everything under {root}")
        say("(training mode: nothing here is a valid invoice)\n")
        chain = Child(
            "chain",
            [
                "hostsim",
                "chain",
                "--data",
                str(root / "chain"),
                "--listen",
                "127.0.0.1:0",
                "--training",
                "--faults",
            ],
            logs / "chain.log",
        )
        children.append(chain)
        chain_url, admin = chain.ready["url"], chain.ready["admin_url"]
        say(f"1. chain: {chain.ready['nodes']} consortium nodes at {chain_url}")
        link = root / "printer.tty"
        device = Child(
            "printer",
            ["device", "run", "--state", str(root / "printer"), "--link", str(link), "--training"],
            logs / "printer.log",
        )
        children.append(device)
        say(f"2. printer {device.ready['device_id']} on virtual serial port {link}")
        syncd = Child(
            "sync daemon",
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
            logs / "syncd.log",
        )
        children.append(syncd)
        api = syncd.ready["url"]
        wait_online(api)
        say(f"3. sync daemon: POS API at {api}\n")

        issued: list[dict[str, Any]] = []
        for _ in range(args.invoices):
            status, doc = http("POST", f"{api}/v1/invoices", INVOICE)
            if status != 201 and status != 200:
                raise RuntimeError(f"issuing failed: {status} {doc}")
            issued.append(doc)
        say(f"4. issued {len(issued)} invoices online; the first one's receipt:\n")
        say(issued[0]["receipt"]["text"])
        synced = wait_synced(api, len(issued))
        say(f"   on the chain: synced through {synced['devices'][0]['synced_through']}\n")

        http("POST", f"{admin}/admin/faults", {"mode": "refuse"})
        say("5. the chain is now unreachable (connection refused); the shop keeps selling:")
        for _ in range(args.invoices):
            status, doc = http("POST", f"{api}/v1/invoices", INVOICE)
            issued.append(doc)
            say(
                f"   invoice {doc['code']}/{doc['number']}  total {doc['total'] / 100:.2f}"
                "  signed and journaled on the printer"
            )
        time.sleep(1.0)
        _, status_now = http("GET", f"{api}/v1/status")
        dev = status_now["devices"][0]
        waiting = len(issued) - dev["synced_through"]
        chain_state = status_now["chain"]["state"]
        say(f"   waiting for the chain: {waiting} documents; chain state: {chain_state}\n")

        http("DELETE", f"{admin}/admin/faults")
        started = time.monotonic()
        synced = wait_synced(api, len(issued))
        say(
            f"6. chain back: all {len(issued)} documents on the chain"
            f" {time.monotonic() - started:.1f} s later, each exactly once"
        )
        _, health = http("GET", f"{chain_url}/v1/health")
        say(
            f"   chain height {health['height']}, {health['reachable']}/{health['nodes']} nodes,"
            f" quorum {health['quorum']}\n"
        )

        first = issued[0]
        query = {
            "code": first["code"],
            "number": first["number"],
            "date": first["issued_at"][:10],
            "check_code": first["check_code"],
        }
        _, answer = http("POST", f"{chain_url}/v1/verify", query)
        say(
            f"7. 查验 {first['code']}/{first['number']} with its check code: {answer['result']}"
            f" (training={answer.get('training')})"
        )
        _, forged = http("POST", f"{chain_url}/v1/verify", {**query, "check_code": "0" * 20})
        say(f"   the same with a made-up check code: {forged['result']}\n")
        kept = args.dir is not None or os.environ.get("TAXCTL_DEMO_KEEP") is not None
        say(f"done. logs: {logs}" if kept else "done. (run with --dir DIR to keep state and logs)")
        return 0
    except (RuntimeError, OSError, KeyError, ValueError) as exc:
        print(f"taxctl demo: {exc} (state and logs kept in {root})", file=sys.stderr)
        failed = True
        return 1
    finally:
        for child in reversed(children):
            child.stop()
        if not failed and args.dir is None and os.environ.get("TAXCTL_DEMO_KEEP") is None:
            shutil.rmtree(root, ignore_errors=True)
