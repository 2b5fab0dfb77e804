"""Tills: concurrent POS clients that drive syncd's local API like a shop does.

Each sale gets its own idempotency key. When the answer is lost (connection
refused or cut, a timeout, syncd saying the outcome is unknown or the printer
offline), the till asks again with the same key until it gets an answer or
its patience runs out, exactly as POS software must; a refusal by the printer
(paper out, offline limit, a bad sale) is counted and the sale is not retried.
Some sales are asked for twice on purpose after a good answer, and the second
answer must name the same document.

Every acknowledged document is kept (and optionally appended to a JSONL
file as it arrives), so a chaos run can check each one is on the chain.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from hostsim.pos.mix import MixSettings, Sale, SaleMix
from hostsim.pos.stats import percentiles

IDEMPOTENCY_HEADER = "Idempotency-Key"
# Answers after which the same request may still be (or become) issued: ask again.
RETRY_CODES = frozenset(
    {"OUTCOME_UNKNOWN", "DEVICE_OFFLINE", "NO_DEVICE", "SHUTTING_DOWN", "INTERNAL_ERROR"}
)


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

    def _session(self) -> tuple[aiohttp.ClientSession, str]:
        timeout = aiohttp.ClientTimeout(total=self.settings.request_timeout)
        api = self.settings.api
        # json= on every POST sends Content-Type: application/json, which syncd requires
        token = self.settings.token
        headers = {"Authorization": f"Bearer {token}"} if token else None
        if api.startswith("unix:"):
            connector = aiohttp.UnixConnector(path=api.removeprefix("unix:"))
            session = aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers)
            return session, "http://localhost"
        limit = aiohttp.TCPConnector(limit=max(self.settings.concurrency, 1))
        session = aiohttp.ClientSession(connector=limit, timeout=timeout, headers=headers)
        return session, api.rstrip("/")

    async def run(self) -> TillReport:
        settings = self.settings
        session, base = self._session()
        self._record = open(settings.record, "a") if settings.record else None  # noqa: SIM115
        started = time.monotonic()
        try:
            async with session:
                tills = [
                    self._till(session, base, started) for _ in range(max(settings.concurrency, 1))
                ]
                await asyncio.gather(*tills)
        finally:
            self.report.elapsed = time.monotonic() - started
            if self._record is not None:
                self._record.close()
        return self.report

    async def _till(self, session: aiohttp.ClientSession, base: str, started: float) -> None:
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
            if device is not None:
                sale = Sale(sale.route, {**sale.body, "device": device}, sale.resend, device)
            self.report.sales += 1
            await self._sell(session, base, sale)

    async def _sell(self, session: aiohttp.ClientSession, base: str, sale: Sale) -> None:
        key = uuid.uuid4().hex
        first = time.monotonic()
        status, answer, attempts = await self._ask(session, base, sale, key)
        if status not in (200, 201):
            return
        ack = Acknowledged(
            device_id=answer["device_id"],
            counter=answer["counter"],
            kind=answer["kind"],
            code=answer["code"],
            number=answer["number"],
            total=answer["total"],
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
            status, again, _ = await self._ask(session, base, sale, key)
            same = (again.get("device_id"), again.get("counter")) == (ack.device_id, ack.counter)
            if status != 200 or not same:
                self.report.resend_mismatched.append(f"{key}: {status} {again}")

    async def _ask(
        self, session: aiohttp.ClientSession, base: str, sale: Sale, key: str
    ) -> tuple[int, dict[str, Any], int]:
        """Post the sale until it is answered for good: (status, answer, attempts). A
        refusal is counted; a sale still unanswered after `patience` is given up."""
        give_up = time.monotonic() + self.settings.patience
        attempts = 0
        pause = 0.05
        while True:
            attempts += 1
            status, answer = await self._post(session, base, sale, key)
            if status in (200, 201):
                return status, answer, attempts
            code = str(answer.get("error", ""))
            if status and code not in RETRY_CODES:
                code = code or f"HTTP_{status}"
                self.report.refused[code] += 1
                self.report.messages.setdefault(code, str(answer.get("message", "")))
                return status, answer, attempts
            if time.monotonic() + pause > give_up:
                self.report.gave_up += 1
                return status, answer, attempts
            self.report.retries += 1
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)

    async def _post(
        self, session: aiohttp.ClientSession, base: str, sale: Sale, key: str
    ) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON answer); status 0 when no answer came at all."""
        try:
            async with session.post(
                f"{base}/v1/{sale.route}",
                json=sale.body,
                headers={IDEMPOTENCY_HEADER: key},
            ) as resp:
                try:
                    answer = await resp.json(content_type=None)
                except ValueError:
                    answer = None
                if not isinstance(answer, dict):
                    answer = {"error": f"HTTP_{resp.status}"}
                return resp.status, answer
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return 0, {"error": type(exc).__name__}


def run_tills(settings: TillSettings) -> TillReport:
    return asyncio.run(Tills(settings).run())
