"""The chaos run against the etcd-backed consortium (`bench/chaos.py --consortium`).

The same shop, tills and checks as `world.py`, with the chain replaced by
3 etcd members and 4 node processes, syncd given every node's URL. The
monkey's chain faults become real ones: a node SIGKILLed and restarted
(kill_chain, and the response faults, which a node has no switch for), one
or two nodes stopped and started again (partition_one, partition_two), the
etcd leader SIGKILLed and restarted (chain_refuse, chain_unavailable). At the
end, besides the checks of every run, every node's ledger is re-checked from
disk and all must hold the same block and transaction rows.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import signal
import sqlite3
import time
import urllib.request
from pathlib import Path
from typing import Any

from hostsim.chaos.check import Verifier, check_ledger, summary
from hostsim.chaos.monkey import Fault, Strike
from hostsim.chaos.run import play
from hostsim.chaos.world import ChaosSettings, World
from hostsim.consortium import identity, up
from taxctl_base.processes import Child


class ConsortiumWorld(World):
    def __init__(self, settings: ChaosSettings, etcd_bin: str) -> None:
        super().__init__(settings)
        self.etcd_bin = etcd_bin
        self.base = self.root / "consortium"
        self.plan = up.cluster_plan(self.base, 4, 3)
        self.members: dict[str, up.Started] = {}
        self.nodes: dict[str, up.Started] = {}
        self.pick = random.Random(settings.seed)

    # --- processes -------------------------------------------------------------------------

    def start_chain(self) -> None:
        if not self.members:
            identity.ceremony(self.base, [n["id"] for n in self.plan["nodes"]], training=True)
            for member in self.plan["etcd"]:
                self.members[member["name"]] = up.start_member(
                    self.etcd_bin, self.base, self.plan, member
                )
            asyncio.run(up._wait_etcd(self.etcd_urls))
        for node in self.plan["nodes"]:
            self.start_node(node["id"])
        self.chain_url = self.nodes["bureau"].url
        # the checks read the auditor's token and the ledger of "the chain": the bureau's
        link = self.root / "chain"
        if not link.exists():
            link.symlink_to(self.base / "nodes" / "bureau")

    @property
    def etcd_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{m['client']}" for m in self.plan["etcd"]]

    def start_node(self, node_id: str) -> None:
        node = next(n for n in self.plan["nodes"] if n["id"] == node_id)
        self.nodes[node_id] = up.start_node(self.base, node, self.etcd_urls, training=True)

    def start_syncd(self) -> None:
        args = ["syncd", "run", "--state", str(self.root / "syncd")]
        for node in self.plan["nodes"]:
            args += ["--chain", f"http://127.0.0.1:{node['port']}"]
        for n in range(self.settings.devices):
            args += ["--device", str(self.root / f"device-{n + 1}.tty")]
        args += ["--api", self.api_listen, "--link-reopen-max", "0.5"]
        self.syncd = Child("syncd", args, self.logs / "syncd.log")
        self.api = self.syncd.ready["url"]
        self.api_listen = self.api.removeprefix("http://")

    def stop(self) -> None:
        self.stop_shop()
        up.stop(list(self.nodes.values()))
        up.stop_etcd(list(self.members.values()))

    # --- chaos -----------------------------------------------------------------------------

    def strike(self, strike: Strike) -> None:
        fault, hold = strike.fault, strike.hold
        ids = [n["id"] for n in self.plan["nodes"]]
        if fault in (Fault.KILL_DEVICE, Fault.KILL_SYNCD):
            super().strike(strike)
        elif fault in (Fault.PARTITION_ONE, Fault.PARTITION_TWO):
            away = self.pick.sample(ids, 1 if fault == Fault.PARTITION_ONE else 2)
            self._down(away, signal.SIGTERM, hold)
        elif fault in (Fault.CHAIN_REFUSE, Fault.CHAIN_UNAVAILABLE):
            name = self.etcd_leader()
            member = self.members[name]
            member.proc.kill()
            member.proc.wait(10)
            time.sleep(hold)
            spec = next(m for m in self.plan["etcd"] if m["name"] == name)
            self.members[name] = up.start_member(self.etcd_bin, self.base, self.plan, spec)
        else:
            self._down([self.pick.choice(ids)], signal.SIGKILL, hold)

    def _down(self, node_ids: list[str], sig: int, hold: float) -> None:
        for node_id in node_ids:
            proc = self.nodes[node_id].proc
            proc.send_signal(sig)
            proc.wait(30)
        time.sleep(hold)
        for node_id in node_ids:
            self.start_node(node_id)

    def etcd_leader(self) -> str:
        leader = up.etcd_leader(list(self.members.values()))
        return leader.name if leader is not None else next(iter(self.members))

    # --- after -----------------------------------------------------------------------------

    def wait_same_height(self, timeout: float = 120.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            heights = set()
            for node in self.nodes.values():
                with urllib.request.urlopen(f"{node.url}/v1/health", timeout=10) as resp:
                    heights.add(json.loads(resp.read())["height"])
            if len(heights) == 1:
                return heights.pop()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the nodes stay at different heights: {sorted(heights)}")
            time.sleep(0.5)


def ledger_rows(directory: Path) -> list[Any]:
    db = sqlite3.connect(f"file:{directory / 'ledger.sqlite'}?mode=ro", uri=True)
    try:
        return [
            db.execute("SELECT * FROM blocks ORDER BY height").fetchall(),
            db.execute("SELECT * FROM txs ORDER BY height, position").fetchall(),
        ]
    finally:
        db.close()


def run_consortium_chaos(
    settings: ChaosSettings, etcd_bin: str | None = None, verifier: Verifier | None = None
) -> dict[str, Any]:
    binary = etcd_bin or shutil.which("etcd") or "/usr/bin/etcd"
    world = ConsortiumWorld(settings, binary)
    played = play(world, verifier, world.wait_same_height)
    verdict, tills, chaos_seconds = played.verdict, played.tills, played.chaos_seconds
    rows = [ledger_rows(world.base / "nodes" / n["id"]) for n in world.plan["nodes"]]
    identical = all(r == rows[0] for r in rows)
    ledgers = []
    for node in world.plan["nodes"]:
        check_ledger(verdict, world.base / "nodes" / node["id"])
        ledgers.append(f"{node['id']}: {verdict.ledger}")
    bad = [line for line in ledgers if ": ok" not in line]
    verdict.ledger = bad[0] if bad else verdict.ledger
    if not identical:
        verdict.independent_failures.append("the nodes' ledgers hold different rows")
    report = summary(
        verdict,
        {
            "mode": "consortium",
            "minutes": round(chaos_seconds / 60, 2),
            "devices": settings.devices,
            "sales": tills.get("sales"),
            "gave_up": tills.get("gave_up"),
            "height": played.before_stop,
            "ledgers_identical": identical,
            "strikes": dict(sorted(world.log.strikes.items())),
            "seed": settings.seed,
        },
    )
    return report
