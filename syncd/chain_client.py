"""The one class syncd uses to talk to the chain: `hostsim chain`'s HTTP API
(docs/chain-openapi.yaml), with failover across the consortium node URLs.

Documents and receipts travel as CBOR both ways, so a receipt reaches the
device byte for byte as the chain produced it. A connection error, a
timeout or a 5xx is `ChainDown` (try again later, perhaps on another
node); a 4xx is `ChainRefused` with the chain's code. An adapter for a
production chain gateway would implement the same `ChainPort` methods.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import cbor2

from syncd.chainport import ChainDown, ChainRefused

log = logging.getLogger("taxctl.syncd.chain")

CBOR = "application/cbor"


@dataclass(frozen=True, slots=True)
class SubmitResult:
    status: str
    receipt: dict[str, Any] | None = None
    code: str | None = None
    message: str | None = None
    counter: int | None = None


class ChainClient:
    def __init__(self, urls: Sequence[str], timeout: float = 10.0) -> None:
        if not urls:
            raise ValueError("at least one chain URL is needed")
        self.urls = [u.rstrip("/") for u in urls]
        self.timeout = timeout
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

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One request, tried on each node once starting with the current one."""
        session = await self._http()
        data = None if body is None else cbor2.dumps(body)
        headers = {"Accept": CBOR}
        if data is not None:
            headers["Content-Type"] = CBOR
        last: ChainDown | None = None
        for attempt in range(len(self.urls)):
            index = (self._current + attempt) % len(self.urls)
            url = self.urls[index] + path
            try:
                async with asyncio.timeout(self.timeout):
                    async with session.request(method, url, data=data, headers=headers) as resp:
                        raw = await resp.read()
                        status = resp.status
                        kind = resp.content_type
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                last = ChainDown(f"{self.urls[index]}: {type(exc).__name__}: {exc}".rstrip(": "))
                continue
            if status >= 500:
                code, message = _error(raw, kind)
                last = ChainDown(
                    f"{self.urls[index]}: HTTP {status} {message}", code or "UNAVAILABLE"
                )
                continue
            if index != self._current:
                log.info("chain: now using %s (%s did not answer)", self.urls[index], self.url)
                self._current = index
            if status >= 400:
                code, message = _error(raw, kind)
                raise ChainRefused(code or f"HTTP_{status}", message)
            return _decode(raw, kind)
        assert last is not None
        raise last

    async def submit(self, documents: Sequence[bytes]) -> list[SubmitResult]:
        # Ask the chain to answer before our own timeout: what is not final by then
        # comes back "pending" and is asked for again, rather than timing out.
        wait = max(0.1, min(5.0, self.timeout / 2))
        # Compact receipts: each block's header and signatures come once per answer
        # rather than once per document; they are put back before anything else sees them.
        answer = await self._call(
            "POST",
            f"/v1/documents?wait={wait:g}&receipts=compact",
            {"documents": list(documents)},
        )
        results = answer.get("results") if isinstance(answer, dict) else None
        if not isinstance(results, list) or len(results) != len(documents):
            raise ChainDown(
                "the chain's answer does not hold one result per document", "BAD_ANSWER"
            )
        blocks = blocks_by_height(answer.get("blocks", []))
        return [
            SubmitResult(
                str(r.get("status")),
                full_receipt(r["receipt"], blocks) if isinstance(r.get("receipt"), dict) else None,
                r.get("code"),
                r.get("message"),
                r.get("counter"),
            )
            for r in results
        ]

    async def consortium(self) -> bytes:
        answer = await self._call("GET", "/v1/consortium")
        raw = answer.get("consortium") if isinstance(answer, dict) else None
        if not isinstance(raw, bytes):
            raise ChainDown("the chain's consortium answer holds no signed node list", "BAD_ANSWER")
        return raw

    async def register(
        self,
        *,
        csr: bytes | None = None,
        certificate: bytes | None = None,
        segments: Sequence[bytes] = (),
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"segments": list(segments)}
        if csr is not None:
            body["csr"] = csr
        if certificate is not None:
            body["certificate"] = certificate
        answer = await self._call("POST", "/v1/devices", body)
        if not isinstance(answer, dict):
            raise ChainDown("unexpected registration answer", "BAD_ANSWER")
        return answer

    async def allocate_segment(self, device_id: str, count: int) -> bytes:
        answer = await self._call("POST", f"/v1/devices/{device_id}/segments", {"count": count})
        raw = answer.get("segment") if isinstance(answer, dict) else None
        if not isinstance(raw, bytes):
            raise ChainDown("the chain's segment answer holds no segment", "BAD_ANSWER")
        return raw

    async def record_segment(self, device_id: str, raw: bytes) -> None:
        await self._call("POST", f"/v1/devices/{device_id}/segments", {"segment": raw})

    async def health(self) -> dict[str, Any]:
        answer = await self._call("GET", "/v1/health")
        return answer if isinstance(answer, dict) else {}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def blocks_by_height(blocks: Any) -> dict[int, dict[str, Any]]:
    """A compact answer's `blocks` (header and signatures of each), by height."""
    if not isinstance(blocks, list):
        raise ChainDown("the chain's answer lists its blocks wrongly", "BAD_ANSWER")
    out: dict[int, dict[str, Any]] = {}
    for block in blocks:
        header = block.get("header") if isinstance(block, dict) else None
        height = header.get("height") if isinstance(header, dict) else None
        if type(height) is not int or "signatures" not in block:
            raise ChainDown("the chain's answer lists a block without its header", "BAD_ANSWER")
        out[height] = block
    return out


def full_receipt(receipt: dict[str, Any], blocks: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """A compact receipt with its block's header and signatures put back: the same
    receipt the chain gives in full (a full one is returned as it is)."""
    if "height" not in receipt:
        return receipt
    block = blocks.get(receipt["height"])
    if block is None:
        raise ChainDown(
            f"the chain's answer names block {receipt['height']!r} without listing it",
            "BAD_ANSWER",
        )
    out: dict[str, Any] = {k: receipt[k] for k in ("doc_hash", "position", "proof") if k in receipt}
    out["header"] = block["header"]
    out["signatures"] = block["signatures"]
    out.update((k, receipt[k]) for k in ("device_id", "counter") if k in receipt)
    return out


def _decode(raw: bytes, kind: str) -> Any:
    try:
        if kind == CBOR:
            return cbor2.loads(raw)
        return json.loads(raw or b"null")
    except Exception as exc:  # a garbled answer is the chain's fault: try again later
        raise ChainDown(f"the chain's answer does not decode: {exc}", "BAD_ANSWER") from None


def _error(raw: bytes, kind: str) -> tuple[str | None, str]:
    try:
        body = _decode(raw, kind)
    except ChainDown:
        return None, raw[:200].decode("utf-8", "replace")
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("code")), str(error.get("message"))
    return None, str(body)[:200]
