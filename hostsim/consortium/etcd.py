"""The half-dozen etcd v3 calls a consortium node makes, behind one class.

They go to etcd's own JSON gateway (`/v3/kv/range`, `/v3/kv/txn`, `/v3/watch`, …),
which etcd 3.4 serves on its client port next to gRPC, driven with aiohttp: no
new dependency. Swapping in a gRPC client means reimplementing this class only.

Every answer is hostile input: read up to `MAX_ANSWER` bytes, parsed with the
project's bounded JSON decoder, and every field typed before it is used; an
answer that is not what the API defines is `EtcdError` like an unreachable
member. Requests go to one member; on any failure the next one is tried.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from device.protocol.untrusted import JSON_BODY, InputRefused, loads_json, shown

log = logging.getLogger("taxctl.consortium.etcd")

MAX_ANSWER = 64 * 1024 * 1024
ANSWER_LIMITS = JSON_BODY.allowing(max_items=2_000_000, max_depth=8)
WATCH_LINE = 16 * 1024 * 1024
NOSPACE = "NOSPACE"


class EtcdError(ConnectionError):
    """No usable answer from any member (unreachable, refused, or malformed)."""


class Compacted(EtcdError):
    """The revision asked for was compacted away."""


@dataclass(frozen=True, slots=True)
class KV:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int = 0


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise EtcdError(f"etcd answer: {what} is not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise EtcdError(f"etcd answer: {what} is not base64") from None


def _int(value: object, what: str) -> int:
    # int64 fields arrive as JSON strings; absent means 0 (proto3 default)
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit() and len(value) <= 20:
        return int(value)
    raise EtcdError(f"etcd answer: {what} is not an integer ({shown(value)})")


def _kv(raw: object) -> KV:
    if not isinstance(raw, dict):
        raise EtcdError("etcd answer: a key-value is not an object")
    return KV(
        _unb64(raw.get("key"), "key"),
        _unb64(raw.get("value", ""), "value"),
        _int(raw.get("create_revision"), "create_revision"),
        _int(raw.get("mod_revision"), "mod_revision"),
        _int(raw.get("lease"), "lease"),
    )


def prefix_end(prefix: bytes) -> bytes:
    """The range end that covers every key starting with `prefix`."""
    end = bytearray(prefix)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return b"\x00"
    end[-1] += 1
    return bytes(end)


class Etcd:
    def __init__(self, urls: Sequence[str], timeout: float = 5.0) -> None:
        if not urls:
            raise ValueError("at least one etcd URL is needed")
        self.urls = [u.rstrip("/") for u in urls]
        self.timeout = timeout
        self._current = 0
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST `body` to the first member that answers; its answer, checked to be an object."""
        last = "no member tried"
        for attempt in range(len(self.urls)):
            url = self.urls[(self._current + attempt) % len(self.urls)]
            try:
                answer = await self._post(url + path, body)
            except EtcdError as exc:
                if isinstance(exc, Compacted) or "request is too large" in str(exc):
                    raise
                last = str(exc)
                continue
            self._current = (self._current + attempt) % len(self.urls)
            return answer
        raise EtcdError(f"no etcd member answered {path}: {last}")

    async def _post(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        try:
            async with self._http().post(url, json=body, timeout=timeout) as resp:
                raw = await read_bounded(resp.content, MAX_ANSWER)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise EtcdError(f"{url}: {type(exc).__name__}") from None
        try:
            answer = loads_json(raw, ANSWER_LIMITS)
        except InputRefused as exc:
            raise EtcdError(f"{url}: answer refused: {exc}") from None
        if not isinstance(answer, dict):
            raise EtcdError(f"{url}: the answer is not an object")
        if status != 200 or "error" in answer:
            message = answer.get("error") or answer.get("message")
            text = shown(message, 200)
            if "compacted" in str(message):
                raise Compacted(f"{url}: {text}")
            raise EtcdError(f"{url}: HTTP {status}: {text}")
        return answer

    # --- keys ------------------------------------------------------------------------------

    async def get(self, key: bytes) -> KV | None:
        kvs = await self.range(key, None)
        return kvs[0] if kvs else None

    async def range(
        self,
        key: bytes,
        end: bytes | None,
        *,
        min_create_revision: int = 0,
        max_create_revision: int = 0,
        keys_only: bool = False,
    ) -> list[KV]:
        """Keys in [key, end) (just `key` if end is None), in key order."""
        body: dict[str, Any] = {"key": _b64(key)}
        if end is not None:
            body["range_end"] = _b64(end)
        if min_create_revision:
            body["min_create_revision"] = str(min_create_revision)
        if max_create_revision:
            body["max_create_revision"] = str(max_create_revision)
        if keys_only:
            body["keys_only"] = True
        answer = await self.call("/v3/kv/range", body)
        kvs = answer.get("kvs", [])
        if not isinstance(kvs, list):
            raise EtcdError("etcd answer: kvs is not a list")
        return [_kv(kv) for kv in kvs]

    async def revision(self) -> int:
        answer = await self.call("/v3/kv/range", {"key": _b64(b"\x00"), "count_only": True})
        header = answer.get("header")
        return _int(header.get("revision") if isinstance(header, dict) else None, "revision")

    async def create(
        self, key: bytes, value: bytes, lease: int = 0, also: Sequence[bytes] = ()
    ) -> tuple[bool, KV | None]:
        """Put `key` only if it does not exist (create_revision == 0), and with it the
        (empty) keys `also`. (True, None) if this call created it, else (False, the
        existing key-value) — or (False, None) if it vanished (leased) between the
        compare and the read."""
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            put["lease"] = str(lease)
        extra = [{"request_put": {"key": _b64(k), "value": ""}} for k in also]
        answer = await self.call(
            "/v3/kv/txn",
            {
                "compare": [
                    {
                        "key": _b64(key),
                        "target": "CREATE",
                        "result": "EQUAL",
                        "create_revision": "0",
                    }
                ],
                "success": [{"request_put": put}, *extra],
                "failure": [{"request_range": {"key": _b64(key)}}],
            },
        )
        if answer.get("succeeded") is True:
            return True, None
        responses = answer.get("responses")
        if not isinstance(responses, list) or not responses:
            raise EtcdError("etcd answer: a failed compare without its read")
        first = responses[0]
        ranged = first.get("response_range") if isinstance(first, dict) else None
        kvs = ranged.get("kvs", []) if isinstance(ranged, dict) else None
        if not isinstance(kvs, list):
            raise EtcdError("etcd answer: a failed compare without its read")
        return False, (_kv(kvs[0]) if kvs else None)

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        answer = await self.call("/v3/kv/put", body)
        header = answer.get("header")
        return _int(header.get("revision") if isinstance(header, dict) else None, "revision")

    async def delete(self, key: bytes, end: bytes | None = None) -> int:
        body: dict[str, Any] = {"key": _b64(key)}
        if end is not None:
            body["range_end"] = _b64(end)
        answer = await self.call("/v3/kv/deleterange", body)
        return _int(answer.get("deleted"), "deleted")

    async def delete_keys(self, keys: Sequence[bytes]) -> None:
        """Delete these keys in one transaction (at most etcd's --max-txn-ops of them)."""
        if keys:
            ops = [{"request_delete_range": {"key": _b64(k)}} for k in keys]
            await self.call("/v3/kv/txn", {"compare": [], "success": ops})

    # --- leases ----------------------------------------------------------------------------

    async def grant(self, ttl: int) -> int:
        answer = await self.call("/v3/lease/grant", {"TTL": str(ttl)})
        lease = _int(answer.get("ID"), "lease ID")
        if lease == 0:
            raise EtcdError("etcd answer: no lease granted")
        return lease

    async def keepalive(self, lease: int) -> bool:
        """Refresh the lease once; False if it has already expired."""
        answer = await self.call("/v3/lease/keepalive", {"ID": str(lease)})
        result = answer.get("result")
        ttl = result.get("TTL") if isinstance(result, dict) else None
        return _int(ttl, "TTL") > 0

    # --- housekeeping ----------------------------------------------------------------------

    async def compact(self, revision: int) -> None:
        with contextlib.suppress(Compacted):  # auto-compaction may have got there first
            await self.call("/v3/kv/compaction", {"revision": str(revision), "physical": False})

    async def defragment(self) -> None:
        """Defragment every member, one at a time (each pauses its own writes meanwhile)."""
        for url in self.urls:
            with contextlib.suppress(EtcdError):
                await self._post(url + "/v3/maintenance/defragment", {})

    async def alarms(self) -> list[str]:
        """The alarms raised on the cluster (e.g. NOSPACE: the quota is full)."""
        answer = await self.call("/v3/maintenance/alarm", {"action": "GET"})
        out = []
        for alarm in answer.get("alarms", []) if isinstance(answer.get("alarms"), list) else []:
            if isinstance(alarm, dict) and isinstance(alarm.get("alarm"), str):
                out.append(alarm["alarm"][:40])
        return out

    async def disarm(self, name: str) -> None:
        await self.call("/v3/maintenance/alarm", {"action": "DEACTIVATE", "alarm": name})

    # --- watching --------------------------------------------------------------------------

    async def changes(self, key: bytes, end: bytes) -> AsyncIterator[int]:
        """Yield the revision of each change in [key, end) as etcd streams it (the values
        are read separately: this only wakes the reader). Ends when the stream breaks.
        Each event carries its value: watch small keys only (a line is at most 128 KiB)."""
        body = {"create_request": {"key": _b64(key), "range_end": _b64(end)}}
        url = self.urls[self._current] + "/v3/watch"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout)
        try:
            async with self._http().post(url, json=body, timeout=timeout) as resp:
                if resp.status != 200:
                    return
                while True:
                    line = await resp.content.readuntil(b"\n")
                    if not line or len(line) > WATCH_LINE:
                        return
                    revision = _watch_revision(line)
                    if revision is not None:
                        yield revision
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError, EtcdError):
            self._current = (self._current + 1) % len(self.urls)
            return


def _watch_revision(line: bytes) -> int | None:
    try:
        message = loads_json(line, ANSWER_LIMITS)
    except InputRefused:
        return None
    result = message.get("result") if isinstance(message, dict) else None
    header = result.get("header") if isinstance(result, dict) else None
    if not isinstance(header, dict):
        return None
    return _int(header.get("revision"), "revision")


async def read_bounded(stream: aiohttp.StreamReader, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for chunk in stream.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise EtcdError(f"an answer over {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


async def wait_ready(etcd: Etcd, timeout: float) -> None:
    """Until the cluster answers a read (it has a leader), or EtcdError after `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            await etcd.revision()
            return
        except EtcdError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.1)
