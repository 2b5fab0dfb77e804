"""A per-client token bucket for 查验, so check codes cannot be brute-forced.

查验 is public and answers whether code + number + date + the last 6 check-code
digits match: without a bound, a million guesses find the digits of any receipt
whose code and number are known. Each client (its IP address) gets `burst`
questions at once and `per_minute` more each minute; one over is refused with
429 `rate_limited` and the seconds until the next question is allowed. Time is
injected (the chain's clock), so tests move it instead of sleeping. Only
questions that prove nothing are spent (see queries.verification): a till or
syncd checking receipts it printed never runs out, a guesser does. At most
`max_clients` buckets are kept: a full bucket is the same as no bucket, so the
fullest are forgotten first when there are too many.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from device.protocol.clock import Clock
from hostsim.chain.errors import ChainError, Code


@dataclass(frozen=True, slots=True)
class RateLimit:
    per_minute: float
    burst: int
    max_clients: int = 10_000


# The one declaration of 查验's limit: a person at a till asks a few times a minute.
VERIFY_LIMIT = RateLimit(per_minute=10, burst=20)


class Buckets:
    def __init__(self, limit: RateLimit, clock: Clock) -> None:
        self.limit = limit
        self.clock = clock
        self._tokens: dict[str, tuple[float, float]] = {}  # client -> (tokens, at)

    def _level(self, client: str, now: float) -> float:
        tokens, at = self._tokens.get(client, (float(self.limit.burst), now))
        refill = max(0.0, now - at) * self.limit.per_minute / 60
        return min(float(self.limit.burst), tokens + refill)

    def admit(self, client: str) -> None:
        """Raise 429 rate_limited, with Retry-After, if `client` has no question left."""
        tokens = self._level(client, self.clock.now())
        if tokens < 1:
            wait = math.ceil((1 - tokens) * 60 / self.limit.per_minute)
            raise ChainError(
                Code.RATE_LIMITED,
                f"too many verification questions from this address; ask again in {wait} s",
                retry_after=wait,
            )

    def spend(self, client: str) -> None:
        """Count one question against `client` (questions admitted together may overdraw
        the bucket a little; it refills before the next is admitted)."""
        now = self.clock.now()
        self._tokens[client] = (self._level(client, now) - 1, now)
        if len(self._tokens) > self.limit.max_clients:
            self._forget(now)

    def take(self, client: str) -> None:
        """Admit and spend one question of `client`'s."""
        self.admit(client)
        self.spend(client)

    def _forget(self, now: float) -> None:
        levels = sorted(self._tokens, key=lambda c: self._level(c, now), reverse=True)
        for client in levels[: len(levels) - self.limit.max_clients // 2]:
            del self._tokens[client]
