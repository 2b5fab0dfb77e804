"""Tills: concurrent POS clients that drive syncd's local API like a shop does.

Each sale gets its own idempotency key. When the answer is lost (connection
refused or cut, a timeout, syncd saying the outcome is unknown or the printer
offline), the till asks again with the same key until it gets an answer or
its patience runs out, exactly as POS software must; a refusal by the printer
(paper out, offline limit, a bad sale) is counted and the sale is not retried.
Some sales are asked for twice on purpose after a good answer, and the second
answer must name the same document.

The API's rules (the key, which answers to retry, Retry-After) are
`syncd.posclient`'s, the client POS software uses; a till only sets how long
it keeps asking. Every acknowledged document is kept (and optionally appended to a JSONL
file as it arrives), so a chaos run can check each one is on the chain.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from hostsim.pos.mix import MixSettings, Sale, SaleMix
from hostsim.pos.stats import percentiles
from syncd.posclient import AsyncPosClient, Call, Document, PosError, RetryPolicy, issuing_call

# A till asks again quickly (whatever Retry-After says, at most every second) until its
# patience runs out: the chaos runs measure how soon a sale gets through.
FIRST_PAUSE = 0.05
LONGEST_PAUSE = 1.0
ATTEMPTS = 10_000  # bounded by patience, not by a count


@dataclass(frozen=True)
class TillSettings:
    api: str  # http://HOST:PORT or unix:/path/to/api.sock
    count: int = 100
    concurrency: int = 4
    rate: float = 0.0  # sales per second over all tills; 0: as fast as answers come
    seed: int = 0
    devices: tuple[str, ...] = ()  # sales go round these printers (default: syncd picks)
    patience: float = 30.0  # seconds a till keeps asking about one sale
    request_timeout: float = 15.0
    mix: MixSettings = field(default_factory=MixSettings)
    record: Path | None = None  # JSONL of acknowledged documents
    token: str | None = None  # syncd's api.token_file token, when it has one


@dataclass(frozen=True)
class Acknowledged:
    device_id: str
    counter: int
    kind: str
    code: str
    number: str
    total: int
    key: str
    latency: float
    attempts: int


@dataclass
class TillReport:
    sales: int = 0
    acknowledged: list[Acknowledged] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)
    messages: dict[str, str] = field(default_factory=dict)  # what the cashier saw, per code
    gave_up: int = 0
    retries: int = 0
    resent: int = 0
    resend_mismatched: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    def summary(self) -> dict[str, Any]:
        kinds = Counter(ack.kind for ack in self.acknowledged)
        latencies = [ack.latency for ack in self.acknowledged]
        return {
            "sales": self.sales,
            "acknowledged": len(self.acknowledged),
            "invoices": kinds.get("invoice", 0),
            "credit_notes": kinds.get("credit", 0),
            "refused": dict(sorted(self.refused.items())),
            "gave_up": self.gave_up,
            "retries": self.retries,
            "resent_same_key": self.resent,
            "resend_mismatched": len(self.resend_mismatched),
            "elapsed_s": round(self.elapsed, 3),
            "acknowledged_per_s": round(len(latencies) / self.elapsed, 1) if self.elapsed else 0,
            "latency_ms": {
                name: round(value * 1000, 2) for name, value in percentiles(latencies).items()
            },
        }


class Tills:
    def __init__(self, settings: TillSettings) -> None:
        self.settings = settings
        self.mix = SaleMix(settings.seed, settings.mix)
        self.report = TillReport()
        self._next = 0
        self._record: TextIO | None = None

    def _client(self) -> AsyncPosClient:
        settings = self.settings
        policy = RetryPolicy(
            attempts=ATTEMPTS,
            total=settings.patience,
            backoff=FIRST_PAUSE,
            max_pause=LONGEST_PAUSE,
        )
        return AsyncPosClient(
            settings.api,
            token=settings.token,
            timeout=settings.request_timeout,
            retry=policy,
            limit=max(settings.concurrency, 1),
        )

    async def run(self) -> TillReport:
        settings = self.settings
        client = self._client()
        self._record = open(settings.record, "a") if settings.record else None  # noqa: SIM115
        started = time.monotonic()
        try:
            async with client:
                tills = [self._till(client, started) for _ in range(max(settings.concurrency, 1))]
                await asyncio.gather(*tills)
        finally:
            self.report.elapsed = time.monotonic() - started
            if self._record is not None:
                self._record.close()
        return self.report

    async def _till(self, client: AsyncPosClient, started: float) -> None:
        settings = self.settings
        while self._next < settings.count:
            index = self._next
            self._next += 1
            if settings.rate > 0:
                delay = started + index / settings.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            sale = self.mix.next_sale()
            device = sale.device
            if device is None and settings.devices:
                device = settings.devices[index % len(settings.devices)]
            self.report.sales += 1
            await self._sell(client, sale, device)

    async def _sell(self, client: AsyncPosClient, sale: Sale, device: str | None) -> None:
        # One request for the sale, its key made up by the client, and sent as it is by
        # every retry and by the resend below.
        call = issuing_call(sale.route, sale.body, device=device, paper=None, key=None)
        key = call.key or ""
        first = time.monotonic()
        answer = await self._ask(client, call)
        if answer is None:
            return
        document, attempts = answer
        ack = Acknowledged(
            device_id=document.device_id or "",
            counter=document.counter or 0,
            kind=document.kind or "",
            code=document.code or "",
            number=document.number or "",
            total=document.total or 0,
            key=key,
            latency=time.monotonic() - first,
            attempts=attempts,
        )
        self.report.acknowledged.append(ack)
        if ack.kind == "invoice":
            self.mix.issued(ack.code, ack.number, ack.device_id)
        if self._record is not None:
            self._record.write(json.dumps(ack.__dict__) + "\n")
            self._record.flush()
        if sale.resend:
            # The till "lost" the answer it just got and asks again: the same document, or a bug.
            self.report.resent += 1
            again = await self._ask(client, call)
            same = (
                again is not None
                and again[0].retry
                and ((again[0].device_id, again[0].counter) == (ack.device_id, ack.counter))
            )
            if not same:
                got = "no document" if again is None else f"{again[0].device_id}/{again[0].counter}"
                self.report.resend_mismatched.append(f"{key}: {got}")

    async def _ask(self, client: AsyncPosClient, call: Call) -> tuple[Document, int] | None:
        """Post the sale until it is answered for good: (document, attempts), or None for a
        refusal (counted) or a sale still unanswered after `patience` (given up)."""
        attempts = 1

        def retried(_error: PosError) -> None:
            nonlocal attempts
            attempts += 1
            self.report.retries += 1

        try:
            document = Document.from_json(await client.send(call, on_retry=retried))
        except PosError as exc:
            if exc.retryable:  # still no answer for good when patience ran out
                self.report.gave_up += 1
            else:
                self.report.refused[exc.code] += 1
                self.report.messages.setdefault(exc.code, exc.message)
            return None
        return document, attempts


def run_tills(settings: TillSettings) -> TillReport:
    return asyncio.run(Tills(settings).run())
