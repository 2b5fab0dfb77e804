"""The journal's own thread: commits run there, in order, off the event loop.

sqlite3 releases the GIL while a statement runs (the fsync included), so
the loop keeps reading the port and signing the next group meanwhile. Each
job reports back to the loop with a single call_soon_threadsafe. An
executor future chained to an asyncio future, awaited by a task, took the
loop two more turns to get there, and the signing loop only gives the
event loop a turn every few documents: the answers of a finished commit
waited for those turns.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
Done = Callable[[Any, BaseException | None], None]  # (result, error), called in the loop
_Job = tuple[asyncio.AbstractEventLoop, Callable[..., Any], tuple[Any, ...], Done]


class JournalThread:
    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="journal", daemon=True)
        self._thread.start()

    def submit(self, done: Done, fn: Callable[..., Any], *args: Any) -> None:
        """Run fn(*args) in the journal thread, then done(result, error) in this loop."""
        self._jobs.put((asyncio.get_running_loop(), fn, args, done))

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) in the journal thread, after every job submitted before it."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()

        def done(result: T, error: BaseException | None) -> None:
            if future.cancelled():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        self.submit(done, fn, *args)
        return await future

    def close(self) -> None:
        """Finish the jobs already submitted, then stop the thread."""
        self._jobs.put(None)
        self._thread.join()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, fn, args, done = job
            try:
                result, error = fn(*args), None
            except BaseException as exc:  # handed to the loop, never lost in this thread
                result, error = None, exc
            loop.call_soon_threadsafe(done, result, error)
