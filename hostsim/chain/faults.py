"""Fault injection (`--faults`): make the chain fail the way real networks and nodes do.

Modes, set through the admin API on its own port:

- `unavailable`: every API request answers 503;
- `refuse`: the API port stops listening (connection refused) and open
  connections are cut;
- `latency`: every request waits `latency_ms` first;
- `drop_after_commit`: a POST runs to completion (documents committed),
  then the connection is cut before the response is sent;
- `drop_mid_response`: half of the response is sent, then the connection
  is cut.

`count` limits a mode to that many requests (then it clears itself);
`partition` takes nodes out of signing (blocks stall without a quorum),
`heal` brings them all back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from aiohttp import web

from hostsim.chain import wire
from hostsim.chain.api import errors
from hostsim.chain.errors import ChainError, Code
from hostsim.chain.node import Chain


class Mode(StrEnum):
    NONE = "none"
    UNAVAILABLE = "unavailable"
    REFUSE = "refuse"
    LATENCY = "latency"
    DROP_AFTER_COMMIT = "drop_after_commit"
    DROP_MID_RESPONSE = "drop_mid_response"


@dataclass
class Faults:
    mode: Mode = Mode.NONE
    latency: float = 0.0
    remaining: int | None = None
    injected: int = 0

    def take(self, request: web.Request) -> tuple[Mode, float]:
        """The fault for this request and its latency (counting it), or NONE."""
        mode, latency = self.mode, self.latency
        if mode == Mode.NONE:
            return mode, 0.0
        if mode in (Mode.DROP_AFTER_COMMIT, Mode.DROP_MID_RESPONSE) and request.method != "POST":
            return Mode.NONE, 0.0
        self.injected += 1
        if self.remaining is not None:
            self.remaining -= 1
            if self.remaining <= 0 and mode != Mode.REFUSE:
                self.clear()
        return mode, latency

    def clear(self) -> None:
        self.mode, self.latency, self.remaining = Mode.NONE, 0.0, None

    def view(self) -> dict[str, Any]:
        return {
            "mode": self.mode.value,
            "latency_ms": round(self.latency * 1000),
            "count": self.remaining,
            "injected": self.injected,
        }


FAULTS: web.AppKey[Faults] = web.AppKey("faults", Faults)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _cut(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()


@web.middleware
async def inject(request: web.Request, handler: Handler) -> web.StreamResponse:
    faults = request.app[FAULTS]
    mode, latency = faults.take(request)
    if mode == Mode.REFUSE:
        _cut(request)
        raise ConnectionResetError("refusing (fault injection)")
    if mode == Mode.UNAVAILABLE:
        return wire.error_response(
            ChainError(Code.UNAVAILABLE, "the chain is unavailable (fault injection)")
        )
    if mode == Mode.LATENCY:
        await asyncio.sleep(latency)
    response = await handler(request)
    if mode == Mode.DROP_AFTER_COMMIT:
        _cut(request)
        return response
    if mode == Mode.DROP_MID_RESPONSE and isinstance(response, web.Response):
        body = bytes(response.body or b"")  # type: ignore[arg-type]
        stream = web.StreamResponse(status=response.status, headers=response.headers)
        stream.content_length = len(body)
        await stream.prepare(request)
        await stream.write(body[: len(body) // 2])
        _cut(request)
        return stream
    return response


class Listener:
    """The API's listening socket, which `refuse` closes and clearing reopens."""

    def __init__(self, runner: web.AppRunner, host: str, port: int) -> None:
        self.runner, self.host, self.port = runner, host, port
        self.site: web.TCPSite | None = None

    async def start(self) -> int:
        self.site = web.TCPSite(self.runner, self.host, self.port, reuse_address=True)
        await self.site.start()
        if self.port == 0:  # keep the port the system chose, so a restart reuses it
            self.port = int(self.runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        if self.site is not None:
            await self.site.stop()
            self.site = None


def admin_app(chain: Chain, faults: Faults, listener: Listener) -> web.Application:
    async def get_faults(request: web.Request) -> web.Response:
        return web.json_response({**faults.view(), "partitioned": sorted(chain.nodes.partitioned)})

    async def set_faults(request: web.Request) -> web.Response:
        body = await wire.read_body(request, wire.FLAT)
        try:
            mode = Mode(body.get("mode", ""))
        except ValueError:
            raise ChainError(
                Code.BAD_REQUEST, f"mode is one of {[m.value for m in Mode]}"
            ) from None
        latency, count = body.get("latency_ms", 0), body.get("count")
        if type(latency) is not int or not 0 <= latency <= 600_000:
            raise ChainError(Code.BAD_REQUEST, "latency_ms is 0 to 600000")
        if count is not None and (type(count) is not int or count < 1):
            raise ChainError(Code.BAD_REQUEST, "count is a positive integer or null")
        was_refusing = faults.mode == Mode.REFUSE
        faults.mode, faults.latency, faults.remaining = mode, latency / 1000, count
        if mode == Mode.REFUSE and not was_refusing:
            await listener.stop()
        elif mode != Mode.REFUSE and was_refusing:
            await listener.start()
        return web.json_response(faults.view())

    async def clear_faults(request: web.Request) -> web.Response:
        if faults.mode == Mode.REFUSE:
            await listener.start()
        faults.clear()
        return web.json_response(faults.view())

    async def partition(request: web.Request) -> web.Response:
        body = await wire.read_body(request, wire.LISTS)
        nodes = body.get("nodes")
        if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
            raise ChainError(Code.BAD_REQUEST, "nodes is a list of node ids")
        try:
            chain.nodes.partition(nodes)
        except KeyError as exc:
            raise ChainError(Code.NOT_FOUND, str(exc.args[0])) from None
        return web.json_response(_nodes(chain))

    async def heal(request: web.Request) -> web.Response:
        chain.nodes.heal()
        return web.json_response(_nodes(chain))

    app = web.Application(middlewares=[errors])
    app.router.add_get("/admin/faults", get_faults)
    app.router.add_post("/admin/faults", set_faults)
    app.router.add_delete("/admin/faults", clear_faults)
    app.router.add_post("/admin/partition", partition)
    app.router.add_post("/admin/heal", heal)
    return app


def _nodes(chain: Chain) -> dict[str, Any]:
    return {
        "nodes": sorted(chain.nodes.keys),
        "partitioned": sorted(chain.nodes.partitioned),
        "quorum": chain.nodes.quorum,
        "finalizing": chain.nodes.has_quorum(),
    }
