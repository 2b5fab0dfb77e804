"""The shop under chaos: chain, printers behind noisy cables, syncd and tills, as processes.

Every printer sits behind a `noisy-link` process (its pty on one side, the
pty syncd opens on the other) that corrupts, drops and delays bytes. The
chain, the printers and syncd are killed with SIGKILL and started again on
the same state, ports and paths; the chain is also made to refuse, answer
503, lose responses after committing, and lose nodes. The tills run as their
own process for the whole run and record every document they are given.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device.journal import export
from hostsim.chaos.monkey import Fault, Monkey, Strike
from taxctl_base.processes import Child, all_online, http, wait_status


@dataclass
class ChaosSettings:
    root: Path
    seconds: float = 30.0
    devices: int = 2
    rate: float = 40.0  # sales per second over all tills
    corrupt: float = 0.0001  # per byte, each direction
    drop: float = 0.00005
    delay_ms: float = 2.0
    seed: int = 1
    pace: float = 1.0


@dataclass
class ChaosLog:
    strikes: Counter[str] = field(default_factory=Counter)
    noise: dict[str, int] = field(default_factory=Counter)


class World:
    def __init__(self, settings: ChaosSettings) -> None:
        self.settings = settings
        self.root = settings.root
        self.logs = self.root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.log = ChaosLog()
        self.chain: Child | None = None
        self.chain_listen = "127.0.0.1:0"
        self.devices: list[Child | None] = [None] * settings.devices
        self.device_ids: list[str] = []
        self.links: list[Child] = []
        self.syncd: Child | None = None
        self.api_listen = "127.0.0.1:0"
        self.tills: subprocess.Popen[str] | None = None
        self.acks = self.root / "acks.jsonl"

    # --- processes -------------------------------------------------------------------------

    def _child(self, name: str, args: list[str]) -> Child:
        return Child(name, args, self.logs / f"{name}.log")

    def start_chain(self) -> None:
        self.chain = self._child(
            "chain",
            [
                "hostsim",
                "chain",
                "--data",
                str(self.root / "chain"),
                "--listen",
                self.chain_listen,
                "--training",
                "--faults",
                "--workers",
                "0",
            ],
        )
        self.chain_url = self.chain.ready["url"]
        self.chain_listen = self.chain_url.removeprefix("http://")
        self.admin = self.chain.ready["admin_url"]

    def start_device(self, n: int) -> None:
        device = self._child(
            f"device-{n + 1}",
            [
                "device",
                "run",
                "--state",
                str(self.root / f"device-{n + 1}"),
                "--link",
                str(self.root / f"device-{n + 1}.raw.tty"),
                "--training",
            ],
        )
        self.devices[n] = device
        if len(self.device_ids) <= n:
            self.device_ids.append(device.ready["device_id"])

    def start_link(self, n: int) -> None:
        s = self.settings
        self.links.append(
            self._child(
                f"noisy-link-{n + 1}",
                [
                    "hostsim",
                    "noisy-link",
                    "--device",
                    str(self.root / f"device-{n + 1}.raw.tty"),
                    "--link",
                    str(self.root / f"device-{n + 1}.tty"),
                    "--corrupt",
                    str(s.corrupt),
                    "--drop",
                    str(s.drop),
                    "--delay-ms",
                    str(s.delay_ms),
                    "--seed",
                    str(s.seed * 100 + n),
                ],
            )
        )

    def start_syncd(self) -> None:
        args = ["syncd", "run", "--state", str(self.root / "syncd"), "--chain", self.chain_url]
        for n in range(self.settings.devices):
            args += ["--device", str(self.root / f"device-{n + 1}.tty")]
        args += ["--api", self.api_listen, "--link-reopen-max", "0.5"]
        self.syncd = self._child("syncd", args)
        self.api = self.syncd.ready["url"]
        self.api_listen = self.api.removeprefix("http://")

    def start(self) -> None:
        self.start_chain()
        for n in range(self.settings.devices):
            self.start_device(n)
            self.start_link(n)
        self.start_syncd()
        wait_status(self.api, all_online, "printers online")
        s = self.settings
        self.tills = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "taxctl",
                "hostsim",
                "pos",
                "--api",
                self.api,
                "--count",
                str(int(s.rate * s.seconds)),
                "--rate",
                str(s.rate),
                "--concurrency",
                str(2 * s.devices),
                "--seed",
                str(s.seed),
                "--patience",
                "120",
                "--record",
                str(self.acks),
                *[arg for device_id in self.device_ids for arg in ("--device", device_id)],
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=open(self.logs / "tills.log", "ab"),  # noqa: SIM115
            text=True,
        )

    def stop_shop(self) -> None:
        """Stop all but the chain (SIGTERM), collecting the noisy links' counts."""
        if self.tills is not None and self.tills.poll() is None:
            self.tills.kill()
            self.tills.wait()
        for child in [self.syncd, *self.devices]:
            if child is not None:
                child.stop()
        for link in self.links:
            link.stop()
            assert link.proc.stdout is not None
            for line in link.proc.stdout.read().splitlines():
                event = json.loads(line)
                if event.get("event") == "stopped":
                    for side in ("to_device", "to_host"):
                        for key in ("bytes_in", "corrupted", "dropped"):
                            self.log.noise[key] += int(event[side][key])
        self.links.clear()

    def stop(self) -> None:
        self.stop_shop()
        if self.chain is not None:
            self.chain.stop()

    # --- chaos -----------------------------------------------------------------------------

    def run(self) -> None:
        monkey = Monkey(self.settings.seed, self.settings.devices, self.settings.pace)
        deadline = time.monotonic() + self.settings.seconds
        while time.monotonic() < deadline and self.tills_running():
            strike = monkey.next()
            self.strike(strike)
            self.log.strikes[strike.fault.value] += 1
            time.sleep(strike.then_wait)

    def tills_running(self) -> bool:
        return self.tills is not None and self.tills.poll() is None

    def strike(self, strike: Strike) -> None:
        fault, hold = strike.fault, strike.hold
        if fault == Fault.KILL_CHAIN:
            assert self.chain is not None
            kill9(self.chain)
            time.sleep(hold)
            self.start_chain()
        elif fault == Fault.KILL_DEVICE:
            device = self.devices[strike.target]
            assert device is not None
            kill9(device)
            time.sleep(hold)
            self.start_device(strike.target)
        elif fault == Fault.KILL_SYNCD:
            assert self.syncd is not None
            kill9(self.syncd)
            time.sleep(hold)
            self.start_syncd()
        elif fault in (Fault.PARTITION_ONE, Fault.PARTITION_TWO):
            nodes = (
                ["enterprise3"] if fault == Fault.PARTITION_ONE else ["enterprise2", "enterprise3"]
            )
            self._admin("POST", "/admin/partition", {"nodes": nodes})
            time.sleep(hold)
            self._admin("POST", "/admin/heal", {})
        else:
            mode = {
                Fault.CHAIN_REFUSE: {"mode": "refuse"},
                Fault.CHAIN_UNAVAILABLE: {"mode": "unavailable"},
                Fault.CHAIN_LATENCY: {"mode": "latency", "latency_ms": 300},
                Fault.LOST_RESPONSES: {"mode": "drop_after_commit", "count": 3},
                Fault.HALF_RESPONSES: {"mode": "drop_mid_response", "count": 3},
            }[fault]
            self._admin("POST", "/admin/faults", mode)
            time.sleep(hold)
            self._admin("DELETE", "/admin/faults", None)

    def _admin(self, method: str, path: str, body: Any) -> None:
        status, answer = http(method, f"{self.admin}{path}", body)
        if status != 200:
            raise RuntimeError(f"chain admin {method} {path}: {status} {answer}")

    # --- settling --------------------------------------------------------------------------

    def settle(self, timeout: float = 180.0) -> dict[str, Any]:
        """Let the tills finish, then wait until syncd has every journal on the chain."""
        assert self.tills is not None
        started = time.monotonic()
        out, _ = self.tills.communicate(timeout=timeout)
        summary: dict[str, Any] = json.loads(out) if out.strip() else {}
        summary["tills_done_after_s"] = round(time.monotonic() - started, 1)
        # With the tills done nothing more is signed: count each journal once.
        signed = {
            device_id: sum(1 for _ in export(self.root / f"device-{n + 1}"))
            for n, device_id in enumerate(self.device_ids)
        }

        def synced(status: dict[str, Any]) -> bool:
            by_id = {d.get("device_id"): d for d in status["devices"]}
            return all(
                by_id.get(device_id, {}).get("synced_through", -1) >= count
                for device_id, count in signed.items()
            )

        wait_status(self.api, synced, "every journal on the chain", timeout, interval=0.5)
        summary["synced_after_s"] = round(time.monotonic() - started, 1)
        return summary


def kill9(child: Child) -> None:
    child.proc.kill()
    child.proc.wait(10)
