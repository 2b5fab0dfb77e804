"""Retry delays: exponential, jittered, capped.

The cap is what bounds recovery: while the chain (or a port) is away we
try again at least once per `cap` seconds, so the first attempt after it
comes back starts within `cap` of its return. Jitter ("equal jitter":
half the delay fixed, half random) keeps several devices from retrying in
lockstep without ever dropping to a hot loop. Pure: the random source is
injected.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Backoff:
    initial: float
    cap: float
    factor: float = 2.0
    rand: Callable[[], float] = field(default=random.random, repr=False)
    attempts: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.cap:
            raise ValueError(f"need 0 < initial <= cap, got {self.initial} and {self.cap}")
        if self.factor < 1:
            raise ValueError("factor must be at least 1")

    def ceiling(self, attempt: int) -> float:
        """The un-jittered delay before retry number `attempt` (0-based)."""
        if attempt > 64:  # beyond this the power only overflows; the cap has long won
            return self.cap
        return min(self.cap, self.initial * self.factor**attempt)

    def next_delay(self) -> float:
        top = self.ceiling(self.attempts)
        self.attempts += 1
        return top / 2 + self.rand() * top / 2

    def reset(self) -> None:
        self.attempts = 0

    @property
    def failing(self) -> bool:
        return self.attempts > 0
