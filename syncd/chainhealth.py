"""What syncd knows of the chain across devices: whether it answers, and its node list.

`ChainHealth` is the shared view for /v1/status, systemd's STATUS= and the
metrics: every answer from the chain (a submission, a registration, a
segment) counts as success, every failure by its code. `Consortium` is the
chain's node list, fetched once and again when a device refuses it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from syncd.answers import code_label
from syncd.chainport import ChainGateway
from syncd.metrics import SyncdMetrics

log = logging.getLogger("taxctl.syncd")


class ChainHealth:
    """Shared view of the chain across devices, for status and metrics."""

    def __init__(self, metrics: SyncdMetrics | None = None) -> None:
        self.metrics = metrics
        self.ok: bool | None = None
        self.last_error: str | None = None
        self.last_code: str | None = None
        self.since = time.time()

    def success(self) -> None:
        if self.ok is not True:
            if self.ok is False:
                log.info("chain reachable again after %.1f s", time.time() - self.since)
            self.ok, self.last_error, self.last_code = True, None, None
            self.since = time.time()
        if self.metrics:
            self.metrics.chain_up.set(1)

    def failure(self, code: str, text: str) -> None:
        if self.metrics:
            self.metrics.chain_errors.inc(1, code_label(code))
            self.metrics.chain_up.set(0)
        if self.ok is not False or code != self.last_code:
            log.warning("chain unavailable (%s): %s", code, text)
        if self.ok is not False:
            self.since = time.time()
        self.ok, self.last_error, self.last_code = False, text, code

    @property
    def word(self) -> str:
        return {True: "ok", False: "down", None: "unknown"}[self.ok]


class Consortium:
    """The chain's node list, fetched once and refreshed when a device refuses it, with the
    previous epoch's endorsements a device needs to move to it."""

    def __init__(self, chain: ChainGateway) -> None:
        self.chain = chain
        self.raw: bytes | None = None
        self.endorsements: list[dict[str, Any]] = []
        self._lock = asyncio.Lock()

    async def get(self, refresh: bool = False) -> bytes:
        async with self._lock:
            if self.raw is None or refresh:
                offer = await self.chain.consortium_offer()
                self.raw, self.endorsements = offer.consortium, list(offer.endorsements)
            return self.raw
