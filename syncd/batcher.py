"""FETCH pages into chain batches, without I/O of its own (see `Batcher`)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass


@dataclass
class Page:
    first: int
    documents: list[bytes]


class Batcher:
    """Turns FETCH pages into chain batches: what is ready, up to `limit` documents.

    Waits only for the first page, so a slow chain gets big batches (pages
    pile up meanwhile) and a fast one small, early ones. The part of a page
    beyond the limit is carried into the next batch.
    """

    def __init__(
        self, pages: asyncio.Queue[Page | None], fetcher: asyncio.Task[None], limit: int
    ) -> None:
        self.pages = pages
        self.fetcher = fetcher
        self.limit = limit
        self.carry: Page | None = None
        self.ended = False

    async def _page(self, wait: bool) -> Page | None:
        page: Page | None
        if self.carry is not None:
            page, self.carry = self.carry, None
            return page
        if self.ended:
            return None
        if not wait:
            if self.pages.empty():
                return None
            page = self.pages.get_nowait()
        else:
            getter = asyncio.ensure_future(self.pages.get())
            await asyncio.wait({getter, self.fetcher}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                page = getter.result()
            else:
                getter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await getter
                if self.pages.empty():
                    self.fetcher.result()  # a fetch error surfaces here
                    self.ended = True
                    return None
                page = self.pages.get_nowait()
        if page is None:
            self.ended = True
        return page

    async def next(self) -> tuple[int, list[bytes]] | None:
        page = await self._page(wait=True)
        if page is None:
            return None
        first, docs = page.first, list(page.documents)
        while len(docs) < self.limit:
            more = await self._page(wait=False)
            if more is None:
                break
            if more.first != first + len(docs):
                raise RuntimeError(
                    f"FETCH pages not consecutive: {first + len(docs)}, {more.first}"
                )
            docs.extend(more.documents)
        if len(docs) > self.limit:
            self.carry = Page(first + self.limit, docs[self.limit :])
            docs = docs[: self.limit]
        return first, docs
