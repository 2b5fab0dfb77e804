"""One chaos run, start to verdict."""

from __future__ import annotations

import time
from typing import Any

from hostsim.chaos.check import Verifier, check_devices, check_ledger, summary
from hostsim.chaos.world import ChaosSettings, World


def run_chaos(settings: ChaosSettings, verifier: Verifier | None = None) -> dict[str, Any]:
    world = World(settings)
    started = time.monotonic()
    try:
        world.start()
        world.run()
        chaos_seconds = time.monotonic() - started
        tills = world.settle()
        world.stop_shop()
        verdict = check_devices(
            settings.root, world.chain_url, world.device_ids, world.acks, verifier
        )
    finally:
        world.stop()
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
