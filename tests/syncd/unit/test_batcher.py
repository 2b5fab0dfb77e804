"""Batcher: FETCH pages into chain batches."""

from __future__ import annotations

import asyncio

import pytest

from syncd.batcher import Batcher, Page


def docs(first: int, count: int) -> list[bytes]:
    return [f"doc-{c}".encode() for c in range(first, first + count)]


async def batcher_over(pages: list[Page | None], limit: int) -> Batcher:
    queue: asyncio.Queue[Page | None] = asyncio.Queue()
    for page in pages:
        queue.put_nowait(page)
    never = asyncio.get_running_loop().create_future()
    fetcher = asyncio.ensure_future(never)
    return Batcher(queue, fetcher, limit)


async def test_ready_pages_are_joined_up_to_the_limit_and_the_rest_carried() -> None:
    batcher = await batcher_over([Page(1, docs(1, 3)), Page(4, docs(4, 3)), None], limit=4)
    assert await batcher.next() == (1, docs(1, 4))
    assert await batcher.next() == (5, docs(5, 2))
    assert await batcher.next() is None
    batcher.fetcher.cancel()


async def test_pages_that_are_not_consecutive_are_a_bug_not_a_batch() -> None:
    batcher = await batcher_over([Page(1, docs(1, 2)), Page(5, docs(5, 1))], limit=10)
    with pytest.raises(RuntimeError, match="not consecutive"):
        await batcher.next()
    batcher.fetcher.cancel()


async def test_a_fetch_error_surfaces_from_next() -> None:
    queue: asyncio.Queue[Page | None] = asyncio.Queue()

    async def failing() -> None:
        raise ConnectionError("the line went away")

    batcher = Batcher(queue, asyncio.ensure_future(failing()), 10)
    with pytest.raises(ConnectionError):
        await batcher.next()


async def test_it_waits_only_for_the_first_page() -> None:
    queue: asyncio.Queue[Page | None] = asyncio.Queue()
    never = asyncio.ensure_future(asyncio.get_running_loop().create_future())
    batcher = Batcher(queue, never, 10)
    waiting = asyncio.ensure_future(batcher.next())
    await asyncio.sleep(0)
    assert not waiting.done()
    queue.put_nowait(Page(1, docs(1, 2)))
    assert await asyncio.wait_for(waiting, 2) == (1, docs(1, 2))  # not held for more
    never.cancel()
