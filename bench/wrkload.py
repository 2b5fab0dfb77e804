"""Sales from wrk (an HTTP load generator in C) instead of the Python tills.

In a shop the tills are other machines; on the benchmark's one machine the load generator
shares the cores with the system it measures. The Python tills (hostsim.pos.till, on
syncd's PosClient) cost about half a millisecond of CPU a sale; wrk a few microseconds. So
the POS path is measured both ways: with the tills, as the POS software a shop runs, and
with wrk, as what syncd and the printer do when the load costs next to nothing.

Each request is a new sale with its own Idempotency-Key, over `concurrency` keep-alive
connections (one sale in flight on each, like a till), for `seconds`.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

from hostsim.pos.mix import MixSettings, SaleMix

SCRIPT = Path(__file__).with_name("wrk_sales.lua")
BODIES = 256  # distinct invoices, taken in turn


def available() -> str | None:
    """wrk's path, or None where it is not installed (Debian: apt install wrk)."""
    return shutil.which("wrk")


def write_bodies(path: Path, devices: list[str], seed: int) -> None:
    mix = SaleMix(seed, MixSettings(credit_share=0.0, retry_share=0.0))
    with path.open("w") as out:
        for n in range(BODIES):
            body = mix.invoice()
            if devices:
                body["device"] = devices[n % len(devices)]
            out.write(json.dumps(body, ensure_ascii=False, separators=(",", ":")) + "\n")


def sell(
    api: str, devices: list[str], seconds: float, concurrency: int, workdir: Path
) -> dict[str, Any]:
    """wrk's figures for the window, with the CPU wrk used (s) and, per printer, the highest
    counter answered (what the chain must reach for every sale to be synced)."""
    wrk = available()
    if wrk is None:
        raise RuntimeError("wrk is not installed (apt install wrk)")
    bodies = workdir / "bodies.jsonl"
    write_bodies(bodies, devices, seed=3)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [
            wrk,
            "--threads",
            "1",
            "--connections",
            str(concurrency),
            "--duration",
            f"{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "--script",
            str(SCRIPT),
            api,
            "--",
            str(bodies),
            f"bench-{uuid.uuid4().hex[:12]}",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        env={**os.environ, "LC_ALL": "C"},
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited {done.returncode}: {done.stderr[-500:]}")
    figures: dict[str, Any] = json.loads(done.stderr.strip().splitlines()[-1])
    figures["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return figures
