"""A real syncd and printer behind a chain that answers wrongly: the daemon stays up.

Between syncd and the real chain sits a proxy on loopback that, per case,
replaces the chain's answer with a hostile one (after the chain has acted on
the request, so the outcome is unknown to syncd, as after a lost answer).
For each case: the daemon keeps answering, `/v1/status` shows the chain as
down with `BAD_ANSWER`, the POS API still issues invoices; once the chain
answers properly again every document is on it exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import cbor2
import pytest
from aiohttp import web

from tests.device.protocol.test_untrusted import sharing_bomb
from tests.shop import Shop, http, wait_for

CBOR = "application/cbor"
Answer = Callable[[web.Request, Any], Awaitable[web.StreamResponse]]


def cbor(value: Any, status: int = 200) -> web.Response:
    raw = value if isinstance(value, bytes) else cbor2.dumps(value)
    return web.Response(body=raw, status=status, content_type=CBOR)


def changed(change: Callable[[dict[str, Any]], None]) -> Answer:
    """The chain's real answer, altered."""

    async def answer(request: web.Request, real: Any) -> web.StreamResponse:
        change(real)
        return cbor(real)

    return answer


def _receipt_heights_as_lists(answer: dict[str, Any]) -> None:
    answer["height"] = [answer["height"]]
    for result in answer["results"]:
        if isinstance(result.get("receipt"), dict):
            result["receipt"]["height"] = [result["receipt"]["height"]]


def fixed(response: Callable[[], web.StreamResponse]) -> Answer:
    async def answer(request: web.Request, real: Any) -> web.StreamResponse:
        return response()

    return answer


async def declared_too_long(request: web.Request, real: Any) -> web.StreamResponse:
    resp = web.StreamResponse(status=200, headers={"Content-Type": CBOR})
    resp.content_length = 65 * 1024 * 1024  # past the bound: refused before reading
    await resp.prepare(request)
    await resp.write(b"\xa1")
    with contextlib.suppress(ConnectionError):
        await asyncio.sleep(2)
    return resp


HUGE_ERROR = {"error": {"code": "bad_request", "message": "m" * (4 * 1024 * 1024)}}

SUBMIT_CASES: dict[str, Answer] = {
    "results not maps": changed(lambda a: a.update(results=[5] * len(a["results"]))),
    "height a list": changed(_receipt_heights_as_lists),
    "blocks missing": changed(lambda a: a.pop("blocks", None)),
    "blocks wrong": changed(
        lambda a: a.update(blocks=[{"header": b["header"], "signatures": 5} for b in a["blocks"]])
    ),
    "results of the wrong length": changed(lambda a: a.update(results=a["results"][:-1])),
    "not CBOR": fixed(lambda: cbor(b"\xff\xfe this is not CBOR")),
    "500 with a sharing bomb": fixed(lambda: cbor(sharing_bomb(40), status=500)),
    "400 with a huge JSON error": fixed(lambda: web.json_response(HUGE_ERROR, status=400)),
    "larger than the bound": declared_too_long,
}
CONSORTIUM_A_NUMBER = changed(lambda a: a.update(consortium=7))


class HostileProxy:
    """Forwards to the chain; while `mode` is set, answers `path` with it instead."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.mode: Answer | None = None
        self.path = "/v1/documents"
        self.hits: Counter[str] = Counter()
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def set(self, mode: Answer | None, path: str = "/v1/documents") -> None:
        self.mode, self.path = mode, path

    def start(self) -> None:
        self._ready = threading.Event()
        self._thread.start()
        assert self._ready.wait(10), "proxy did not start"

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(10)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        async with aiohttp.ClientSession() as session:
            self.session = session
            app = web.Application(client_max_size=64 * 1024 * 1024)
            app.router.add_route("*", "/{tail:.*}", self.handle)
            runner = web.AppRunner(app, shutdown_timeout=1)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            self.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
            self._ready.set()
            await self._stopped.wait()
            await runner.cleanup()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {
            k: request.headers[k] for k in ("Content-Type", "Accept") if k in request.headers
        }
        async with self.session.request(
            request.method, self.target + request.path_qs, data=body, headers=headers
        ) as resp:
            raw, status = await resp.read(), resp.status
            kind = resp.headers.get("Content-Type", "application/octet-stream")
        mode = self.mode
        if mode is not None and request.path == self.path and status == 200 and kind == CBOR:
            self.hits[id(mode)] += 1
            return await mode(request, cbor2.loads(raw))
        return web.Response(body=raw, status=status, headers={"Content-Type": kind})


@pytest.fixture
def proxy(shop: Shop) -> Iterator[HostileProxy]:
    shop.start_chain()
    p = HostileProxy(shop.chain_url)
    p.start()
    try:
        yield p
    finally:
        p.stop()


def bad_answer_shown(shop: Shop) -> bool:
    chain = shop.status()["chain"]
    return chain["state"] == "down" and chain["code"] == "BAD_ANSWER"


def survive(shop: Shop, proxy: HostileProxy, mode: Answer, path: str = "/v1/documents") -> int:
    """Set a hostile answer, issue an invoice, see it refused (retried) and the daemon fine."""
    proxy.set(mode, path)
    before = proxy.hits[id(mode)]
    status, body = shop.issue()
    assert status == 201, body  # the POS API still issues
    wait_for(lambda: proxy.hits[id(mode)] >= before + 2, 20, "the bad answer retried")
    wait_for(lambda: bad_answer_shown(shop), 10, "BAD_ANSWER in /v1/status", interval=0.02)
    assert shop.syncd is not None and shop.syncd.proc.poll() is None
    return 1


def test_the_daemon_survives_every_bad_answer_and_syncs_once_it_is_good(
    shop: Shop, proxy: HostileProxy
) -> None:
    shop.start_device()
    # the consortium is fetched at the first receipt: hostile from the start
    proxy.set(CONSORTIUM_A_NUMBER, "/v1/consortium")
    shop.start_syncd("--sync-reject-retry-interval", "0.3", chains=(proxy.url,))
    issued = survive(shop, proxy, CONSORTIUM_A_NUMBER, "/v1/consortium")
    for name, mode in SUBMIT_CASES.items():
        try:
            issued += survive(shop, proxy, mode)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc
    assert shop.device_status()["synced_through"] == 0
    _, metrics, _ = http("GET", f"{shop.api}/metrics")
    assert 'taxctl_syncd_chain_errors_total{code="BAD_ANSWER"}' in metrics
    proxy.set(None)
    shop.wait_synced(issued, timeout=30)
    assert shop.assert_exactly_once() == issued
    assert shop.status()["chain"]["state"] == "ok"
