"""docs/chain-openapi.yaml is a valid OpenAPI document, names exactly the routes the
server has, and a property-based fuzz of the public API finds no 5xx."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import yaml
from aiohttp import web
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate

from hostsim.chain.api import build_app
from hostsim.chain.faults import Faults, Listener, admin_app
from hostsim.chain.node import Chain

SPEC = Path(__file__).resolve().parents[2] / "docs" / "chain-openapi.yaml"
schema = schemathesis.from_path(str(SPEC))


def documented() -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    doc = yaml.safe_load(SPEC.read_text())
    public, admin = set(), set()
    for path, item in doc["paths"].items():
        for method in item:
            (admin if path.startswith("/admin/") else public).add((method.upper(), path))
    return public, admin


def served(app: web.Application) -> set[tuple[str, str]]:
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }


def test_document_is_valid_openapi() -> None:
    validate(yaml.safe_load(SPEC.read_text()))


def test_document_matches_the_routes(tmp_path: Path) -> None:
    chain = Chain.open(tmp_path / "chain", training=True)
    try:
        public, admin = documented()
        assert served(build_app(chain)) == public
        listener = Listener(web.AppRunner(web.Application()), "127.0.0.1", 0)
        assert served(admin_app(chain, Faults(), listener)) == admin
    finally:
        chain.close()


@pytest.fixture(scope="module")
def live_chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The chain's API in a thread of its own, on a loopback port."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    state: dict[str, Any] = {}

    async def start() -> None:
        chain = Chain.open(tmp_path_factory.mktemp("fuzz") / "chain", training=True)
        chain.engine.start()
        runner = web.AppRunner(build_app(chain))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        state.update(chain=chain, runner=runner, url=f"http://127.0.0.1:{runner.addresses[0][1]}")

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(20)
    yield str(state["url"])

    async def stop() -> None:
        await state["runner"].cleanup()
        await state["chain"].engine.stop()
        state["chain"].close()

    asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@schema.include(tag="chain").parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzz_public_api_never_answers_5xx(case: Any, live_chain: str) -> None:
    _fuzz(case, live_chain)


@schema.include(tag="bureau").parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzz_bureau_api_never_answers_5xx(case: Any, live_chain: str) -> None:
    _fuzz(case, live_chain)


@schema.include(tag="buyers").parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzz_buyers_api_never_answers_5xx(case: Any, live_chain: str) -> None:
    _fuzz(case, live_chain)


def _fuzz(case: Any, base_url: str) -> None:
    response = case.call(base_url=base_url, timeout=30)
    assert response.status_code < 500, (case.method, case.formatted_path, response.text[:300])
    if response.status_code < 400:
        return
    if not response.headers.get("Content-Type", "").startswith("application/json"):
        # Refused by the HTTP parser before any route runs: only for bytes HTTP forbids
        # in a header value, which no client library would send.
        assert response.status_code == 400
        values = [str(v) for v in (case.headers or {}).values()]
        assert any(any(ord(c) < 32 or ord(c) > 126 for c in v) for v in values), response.text
        return
    body = response.json()
    assert set(body["error"]) >= {"code", "message"}, body
