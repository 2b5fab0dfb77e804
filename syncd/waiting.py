"""The one way syncd's tasks wait: until one of some events is set, or a time passes.

Every loop in syncd sleeps like this (a backoff, a poll interval, a heartbeat)
and must wake at once when asked to stop or when there is work, so none of
them hand-rolls `wait_for(stop.wait(), ...)` or a pair of tasks under
`asyncio.wait`.
"""

from __future__ import annotations

import asyncio


async def until(*events: asyncio.Event, timeout: float | None = None) -> bool:
    """Wait until any of `events` is set, at most `timeout` seconds (None: no limit).
    True if one is set (then or already)."""
    if any(e.is_set() for e in events):
        return True
    if timeout is not None and timeout <= 0:
        return False
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
    return any(e.is_set() for e in events)
