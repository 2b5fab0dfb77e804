"""waiting.until: the one way syncd's loops sleep."""

from __future__ import annotations

import asyncio
import time

from syncd.waiting import until


async def test_it_returns_at_once_for_an_event_already_set() -> None:
    stop = asyncio.Event()
    stop.set()
    assert await until(asyncio.Event(), stop, timeout=30)


async def test_it_wakes_when_any_event_is_set() -> None:
    stop, work = asyncio.Event(), asyncio.Event()
    asyncio.get_running_loop().call_later(0.02, work.set)
    started = time.monotonic()
    assert await until(stop, work, timeout=30)
    assert time.monotonic() - started < 5


async def test_it_gives_up_after_the_timeout_and_leaves_no_task() -> None:
    before = len(asyncio.all_tasks())
    assert not await until(asyncio.Event(), timeout=0.01)
    assert not await until(asyncio.Event(), timeout=0)
    await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) == before
