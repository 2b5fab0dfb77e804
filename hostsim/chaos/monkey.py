"""What goes wrong next, and for how long (pure, seeded, repeatable)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum


class Fault(StrEnum):
    KILL_CHAIN = "kill_chain"  # SIGKILL, restarted on the same port after `hold`
    KILL_DEVICE = "kill_device"
    KILL_SYNCD = "kill_syncd"
    CHAIN_REFUSE = "chain_refuse"  # connection refused for `hold`
    CHAIN_UNAVAILABLE = "chain_unavailable"  # 503 for `hold`
    CHAIN_LATENCY = "chain_latency"
    LOST_RESPONSES = "lost_responses"  # commit, then cut the connection before answering
    HALF_RESPONSES = "half_responses"  # cut the connection halfway through the answer
    PARTITION_ONE = "partition_one"  # one node of four away: quorum holds
    PARTITION_TWO = "partition_two"  # two away: no block is final until healed


WEIGHTS: dict[Fault, int] = {
    Fault.KILL_CHAIN: 2,
    Fault.KILL_DEVICE: 3,
    Fault.KILL_SYNCD: 3,
    Fault.CHAIN_REFUSE: 2,
    Fault.CHAIN_UNAVAILABLE: 2,
    Fault.CHAIN_LATENCY: 1,
    Fault.LOST_RESPONSES: 2,
    Fault.HALF_RESPONSES: 2,
    Fault.PARTITION_ONE: 1,
    Fault.PARTITION_TWO: 1,
}


@dataclass(frozen=True)
class Strike:
    fault: Fault
    target: int  # which printer, for KILL_DEVICE
    hold: float  # seconds the fault lasts (or the process stays dead)
    then_wait: float  # seconds of calm after it


class Monkey:
    def __init__(self, seed: int, devices: int, pace: float = 1.0) -> None:
        self._random = random.Random(seed)
        self.devices = devices
        self.pace = pace  # scales every duration: < 1 for a short run

    def next(self) -> Strike:
        rnd = self._random
        faults = list(WEIGHTS)
        fault = rnd.choices(faults, weights=[WEIGHTS[f] for f in faults])[0]
        return Strike(
            fault=fault,
            target=rnd.randrange(self.devices),
            hold=round(rnd.uniform(0.3, 2.5) * self.pace, 3),
            then_wait=round(rnd.uniform(0.5, 2.0) * self.pace, 3),
        )
