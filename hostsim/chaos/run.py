"""One chaos run, start to verdict."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hostsim.chaos.check import Verdict, Verifier, check_devices, check_ledger, summary
from hostsim.chaos.world import ChaosSettings, World


@dataclass
class Played:
    verdict: Verdict
    tills: dict[str, Any]
    chaos_seconds: float
    before_stop: object = None  # what `before_stop` returned


def play(
    world: World,
    verifier: Verifier | None,
    before_stop: Callable[[], object] | None = None,
) -> Played:
    """Start the world, run the chaos, let the tills settle and check every device against
    the chain; `before_stop` runs while the chain is still up. The world is stopped
    whatever happens."""
    started = time.monotonic()
    try:
        world.start()
        world.run()
        chaos_seconds = time.monotonic() - started
        tills = world.settle()
        world.stop_shop()
        verdict = check_devices(
            world.settings.root, world.chain_url, world.device_ids, world.acks, verifier
        )
        extra = before_stop() if before_stop is not None else None
    finally:
        world.stop()
    return Played(verdict, tills, chaos_seconds, extra)


def run_chaos(settings: ChaosSettings, verifier: Verifier | None = None) -> dict[str, Any]:
    world = World(settings)
    played = play(world, verifier)
    verdict, tills, chaos_seconds = played.verdict, played.tills, played.chaos_seconds
    check_ledger(verdict, settings.root / "chain")
    kills = sum(n for fault, n in world.log.strikes.items() if fault.startswith("kill_"))
    return summary(
        verdict,
        {
            "minutes": round(chaos_seconds / 60, 2),
            "devices": settings.devices,
            "sales": tills.get("sales"),
            "refused_to_tills": tills.get("refused"),
            "gave_up": tills.get("gave_up"),
            "settle_s": {
                "tills_done": tills.get("tills_done_after_s"),
                "all_synced": tills.get("synced_after_s"),
            },
            "kills": kills,
            "strikes": dict(sorted(world.log.strikes.items())),
            "bytes_on_the_line": world.log.noise.get("bytes_in", 0),
            "corrupted_bytes": world.log.noise.get("corrupted", 0),
            "dropped_bytes": world.log.noise.get("dropped", 0),
            "seed": settings.seed,
        },
    )
