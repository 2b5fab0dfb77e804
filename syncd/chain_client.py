"""The one class syncd uses to talk to the chain: `hostsim chain`'s HTTP API
(docs/chain-openapi.yaml), with failover across the consortium node URLs.

Documents and receipts travel as CBOR both ways, so a receipt reaches the
device byte for byte as the chain produced it. A connection error, a
timeout, a 5xx or an answer that is not what the API defines
(`BAD_ANSWER`, see `syncd/answers.py`) is `ChainDown` (try again later,
perhaps on another node); a 4xx is `ChainRefused` with the chain's code.
No answer is read past `max_answer_bytes`. An adapter for a production
chain gateway would implement the same `ChainGateway` methods.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import aiohttp
import cbor2

from syncd import answers
from syncd.answers import MAX_ANSWER_BYTES, blocks_by_height, full_receipt
from syncd.chainport import (
    ChainDown,
    ChainRefused,
    ConsortiumOffer,
    Registration,
    SubmitResult,
)

__all__ = ["ChainClient", "blocks_by_height", "full_receipt"]

log = logging.getLogger("taxctl.syncd.chain")

CBOR = answers.CBOR
T = TypeVar("T")
# A larger answer is decoded and checked in a thread: up to 500,000 items take most of a
# second of Python, during which the POS API and the printer links would stand still.
IN_LOOP_BYTES = 256 * 1024


async def _parsed(raw: bytes, kind: str, parse: Callable[[Any], T]) -> T:
    if len(raw) <= IN_LOOP_BYTES:
        return parse(answers.decode(raw, kind))
    return await asyncio.to_thread(lambda: parse(answers.decode(raw, kind)))


class ChainClient:
    def __init__(
        self,
        urls: Sequence[str],
        timeout: float = 10.0,
        *,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        if not urls:
            raise ValueError("at least one chain URL is needed")
        self.urls = [u.rstrip("/") for u in urls]
        self.timeout = timeout
        self.max_answer_bytes = max_answer_bytes
        self._current = 0
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return self.urls[self._current]

    def reconfigure(self, urls: Sequence[str], timeout: float) -> None:
        self.urls = [u.rstrip("/") for u in urls]
        self.timeout = timeout
        self._current = 0

    async def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=min(self.timeout, 3.0))
            )
        return self._session

    async def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        parse: Callable[[Any], T],
    ) -> T:
        """One request, tried on each node once starting with the current one; the
        answer decoded and checked by `parse`. A node that is away or answers wrongly
        is passed over for the next."""
        session = await self._http()
        data = None if body is None else cbor2.dumps(body)
        headers = {"Accept": CBOR}
        if data is not None:
            headers["Content-Type"] = CBOR
        last: ChainDown | None = None
        for attempt in range(len(self.urls)):
            index = (self._current + attempt) % len(self.urls)
            node = self.urls[index]
            try:
                async with asyncio.timeout(self.timeout):
                    async with session.request(
                        method, node + path, data=data, headers=headers
                    ) as resp:
                        status, kind = resp.status, resp.content_type
                        raw = await self._read(resp)
            except ChainDown as exc:
                last = ChainDown(f"{node}: {exc}", exc.code)
                continue
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                last = ChainDown(f"{node}: {type(exc).__name__}: {exc}".rstrip(": "))
                continue
            try:
                if status >= 400:
                    code, message = answers.error_of(raw, kind)
                    if status < 500:
                        self._use(index)
                        raise ChainRefused(code, message)
                    last = ChainDown(f"{node}: HTTP {status} {code}: {message}", code)
                    continue
                value = await _parsed(raw, kind, parse)
            except ChainDown as exc:
                last = ChainDown(f"{node}: HTTP {status}: {exc}", exc.code)
                continue
            self._use(index)
            return value
        assert last is not None
        raise last

    def _use(self, index: int) -> None:
        if index != self._current:
            log.info("chain: now using %s (%s did not answer)", self.urls[index], self.url)
            self._current = index

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        """The body, up to `max_answer_bytes`: a longer one is a bad answer, refused
        (and its connection dropped) without reading the rest."""
        limit = self.max_answer_bytes
        declared = resp.content_length
        if declared is not None and declared > limit:
            resp.close()
            raise answers.bad(f"an answer of {declared} bytes, more than {limit}")
        out = bytearray()
        while chunk := await resp.content.readany():
            out += chunk
            if len(out) > limit:
                resp.close()
                raise answers.bad(f"an answer of more than {limit} bytes")
        return bytes(out)

    async def submit(self, documents: Sequence[bytes]) -> list[SubmitResult]:
        # Ask the chain to answer before our own timeout: what is not final by then
        # comes back "pending" and is asked for again, rather than timing out.
        wait = max(0.1, min(5.0, self.timeout / 2))
        # Compact receipts: each block's header and signatures come once per answer
        # rather than once per document; they are put back before anything else sees them.
        sent = len(documents)
        return await self._call(
            "POST",
            f"/v1/documents?wait={wait:g}&receipts=compact",
            {"documents": list(documents)},
            lambda answer: answers.submit_answer(answer, sent),
        )

    async def consortium(self) -> bytes:
        return await self._call("GET", "/v1/consortium", None, answers.consortium_answer)

    async def consortium_offer(self) -> ConsortiumOffer:
        def parse(answer: Any) -> ConsortiumOffer:
            raw = answers.consortium_answer(answer)
            return ConsortiumOffer(raw, tuple(answers.endorsements_answer(answer)))

        return await self._call("GET", "/v1/consortium", None, parse)

    async def register(
        self,
        *,
        csr: bytes | None = None,
        certificate: bytes | None = None,
        segments: Sequence[bytes] = (),
        enrolment_code: str | None = None,
    ) -> Registration:
        body: dict[str, Any] = {"segments": list(segments)}
        if csr is not None:
            body["csr"] = csr
        if enrolment_code is not None:
            body["enrolment_code"] = enrolment_code
        if certificate is not None:
            body["certificate"] = certificate
        return await self._call("POST", "/v1/devices", body, answers.registration_answer)

    async def allocate_segment(self, device_id: str, request: bytes) -> bytes:
        return await self._call(
            "POST",
            f"/v1/devices/{device_id}/segments",
            {"request": request},
            lambda answer: answers.segment_answer(answer, device_id),
        )

    async def record_segment(self, device_id: str, raw: bytes) -> None:
        await self._call(
            "POST",
            f"/v1/devices/{device_id}/segments",
            {"segment": raw},
            lambda answer: answers.segment_answer(answer, device_id),
        )

    async def invoice_claimed(
        self, code: str, number: str, date: str, check_code: str
    ) -> bool | None:
        query = {"code": code, "number": number, "date": date, "check_code": check_code[-6:]}
        return await self._call("POST", "/v1/verify", query, answers.claimed_answer)

    async def health(self) -> answers.Health:
        return await self._call("GET", "/v1/health", None, answers.health_answer)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
