"""Documents held ahead of a counter gap are bounded: per device, in all, and in age.

A held document is refused with `held_full` once either cap is reached, and nothing
else changes; documents older than the age limit are dropped oldest first, from memory
and from the ledger, on the next submission and at start (time from the injected clock).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from device.protocol.clock import ManualClock
from device.protocol.document import parse_document
from hostsim.chain.api import build_app
from hostsim.chain.node import Chain
from hostsim.chain.state import HeldLimits
from tests.hostsim.chain.conftest import Api, DeviceSim, snapshot

pytestmark = pytest.mark.asyncio

LIMITS = HeldLimits(per_device=3, total=5, max_age=60.0)


@asynccontextmanager
async def running(directory: Path, clock: ManualClock) -> AsyncIterator[Api]:
    """The chain on `directory` with small held limits, and its API."""
    chain = Chain.open(
        directory, training=True, clock=clock, block_interval=0.005, held_limits=LIMITS
    )
    chain.engine.start()
    server = TestServer(build_app(chain), host="127.0.0.1")
    await server.start_server()
    session = aiohttp.ClientSession()
    try:
        yield Api(chain, server, session)
    finally:
        await session.close()
        await server.close()
        await chain.engine.stop()
        chain.close()
        await asyncio.sleep(0)


def held_rows(api: Api) -> list[tuple[str, int]]:
    rows = api.chain.ledger.db.execute(
        "SELECT device_id, counter FROM held ORDER BY device_id, counter"
    ).fetchall()
    return [(str(d), int(c)) for d, c in rows]


def held_in_memory(api: Api) -> list[tuple[str, int]]:
    held = api.chain.engine.state.held
    return sorted((device, counter) for device, docs in held.items() for counter in docs)


def statuses(results: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(r["status"], r.get("code")) for r in results]


async def committed_counter(api: Api, sim: DeviceSim) -> int:
    for _ in range(200):
        _, dev = await api.call("GET", f"/v1/devices/{sim.device_id}", headers=api.audit)
        if dev["last_counter"] == dev["accepted_counter"]:
            return int(dev["last_counter"])
        await asyncio.sleep(0.01)
    raise AssertionError("documents did not become final")


async def test_a_device_past_its_cap_is_refused_and_nothing_held_is_lost(
    tmp_path: Path, device_factory: Callable[[], DeviceSim]
) -> None:
    sim = device_factory()
    docs = sim.issue(6)
    async with running(tmp_path / "chain", ManualClock()) as api:
        await api.register(sim)
        assert statuses(await api.submit(docs[1:4])) == [("held", None)] * 3
        before = await snapshot(api, sim.device_id)
        rows_before = held_rows(api)
        refused = await api.submit(docs[4:5])
        assert statuses(refused) == [("rejected", "held_full")]
        assert "send 1 first" in refused[0]["message"]
        assert await snapshot(api, sim.device_id) == before
        assert held_rows(api) == rows_before == [(sim.device_id, c) for c in (2, 3, 4)]
        # a refusal for being full is not a verdict on the document: not remembered
        status, _ = await api.call("GET", f"/v1/tx/{refused[0]['hash']}")
        assert status == 404
        # the document that fills the gap commits those held behind it
        assert statuses(await api.submit(docs[:1])) == [("committed", None)]
        assert await committed_counter(api, sim) == 4
        assert held_rows(api) == [] and api.chain.engine.state.held_count() == 0
        # and the refused one is accepted when sent again
        assert statuses(await api.submit(docs[4:6])) == [("committed", None)] * 2


async def test_the_total_cap_refuses_any_device_but_in_order_documents_still_commit(
    tmp_path: Path, device_factory: Callable[[], DeviceSim]
) -> None:
    first, second, third = device_factory(), device_factory(), device_factory()
    a, b, c = first.issue(4), second.issue(4), third.issue(2)
    async with running(tmp_path / "chain", ManualClock()) as api:
        for sim in (first, second, third):
            await api.register(sim)
        assert statuses(await api.submit(a[1:4])) == [("held", None)] * 3
        assert statuses(await api.submit(b[1:4])) == [("held", None)] * 2 + [
            ("rejected", "held_full")
        ]
        refused = await api.submit(c[1:2])
        assert statuses(refused) == [("rejected", "held_full")]
        assert "5 documents behind counter gaps" in refused[0]["message"]
        assert api.chain.engine.state.held_count() == 5 and len(held_rows(api)) == 5
        # a device in order is not held at all: the cap does not touch it
        assert statuses(await api.submit(c[:1])) == [("committed", None)]
        assert statuses(await api.submit(c[1:2])) == [("committed", None)]


async def test_holding_past_the_cap_does_not_grow_the_held_table(
    tmp_path: Path, device_factory: Callable[[], DeviceSim]
) -> None:
    sim = device_factory()
    docs = sim.issue(60)
    async with running(tmp_path / "chain", ManualClock()) as api:
        await api.register(sim)
        await api.submit(docs[1:4])
        size = api.chain.ledger.db.execute("SELECT sum(length(body)) FROM held").fetchone()[0]
        results = await api.submit(docs[4:])
        assert statuses(results) == [("rejected", "held_full")] * 56
        assert held_in_memory(api) == [(sim.device_id, c) for c in (2, 3, 4)]
        assert api.chain.ledger.db.execute("SELECT sum(length(body)) FROM held").fetchone() == (
            size,
        )
        assert len(api.chain.engine.rejections) == 0


async def test_old_held_documents_expire_oldest_first_and_after_a_restart(
    tmp_path: Path, device_factory: Callable[[], DeviceSim]
) -> None:
    first, second = device_factory(), device_factory()
    a, b = first.issue(3), second.issue(3)
    clock = ManualClock(1_790_000_000.0)
    start = clock.now()
    async with running(tmp_path / "chain", clock) as api:
        await api.register(first)
        await api.register(second)
        await api.submit(a[1:2])  # first's 2, at +0
        clock.advance(30)
        await api.submit(a[2:3])  # first's 3, at +30
        clock.advance(10)
        await api.submit(b[1:2])  # second's 2, at +40
        clock.advance(21)
        # +61: first's 2 is over 60 s old; dropped before this submission is admitted
        assert statuses(await api.submit(b[2:3])) == [("held", None)]
        expected = [(first.device_id, 3), (second.device_id, 2), (second.device_id, 3)]
        assert held_in_memory(api) == held_rows(api) == sorted(expected)
        status, _ = await api.call("GET", f"/v1/tx/{parse_document(a[1]).hash.hex()}")
        assert status == 404
    clock.set(start + 95)  # first's 3 (+30) is now 65 s old, second's 2 (+40) 55 s
    async with running(tmp_path / "chain", clock) as api:
        expected = [(second.device_id, 2), (second.device_id, 3)]
        assert held_in_memory(api) == held_rows(api) == expected
        # what is still held commits when its gap fills; the expired one is sent again
        assert statuses(await api.submit(b[:1])) == [("committed", None)]
        assert await committed_counter(api, second) == 3
        assert statuses(await api.submit(a)) == [("committed", None)] * 3
