"""PosApi through aiohttp's TestClient, over an attachment whose printer is in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from syncd.api import ApiContext, PosApi
from syncd.attachment import Attachment
from syncd.idempotency import IdempotencyStore
from syncd.metrics import SyncdMetrics
from tests.device.conftest import INVOICE
from tests.syncd.inprocess import post_json
from tests.syncd.unit.memory import Printer, memory_printer


class Engine:
    """What the API needs of a device's engine: to be woken."""

    def __init__(self) -> None:
        self.wakes = 0

    def wake(self) -> None:
        self.wakes += 1


@asynccontextmanager
async def pos_api(tmp_path: Path, devices: list[Attachment]) -> AsyncIterator[TestClient[Any, Any]]:
    store = IdempotencyStore(tmp_path / "syncd")
    ctx = ApiContext(devices=devices, store=store, metrics=SyncdMetrics(), status=dict)
    http = TestClient(TestServer(PosApi(ctx).app()))
    await http.start_server()
    try:
        yield http
    finally:
        await http.close()
        store.close()


async def post(http: TestClient[Any, Any], body: Any, key: str) -> tuple[int, dict[str, Any]]:
    return await post_json(http, "/v1/invoices", body, key)


@asynccontextmanager
async def till(tmp_path: Path) -> AsyncIterator[tuple[Printer, Engine, TestClient[Any, Any]]]:
    async with memory_printer(tmp_path) as printer:
        engine = Engine()
        device = Attachment(printer.link, engine)  # type: ignore[arg-type]
        async with pos_api(tmp_path, [device]) as http:
            yield printer, engine, http


async def test_an_invoice_is_issued_once_per_key_and_wakes_its_engine(tmp_path: Path) -> None:
    async with till(tmp_path) as (printer, engine, http):
        status, body = await post(http, INVOICE, "sale-1")
        assert (status, body["counter"], body["retry"]) == (201, 1, False), body
        assert body["idempotency_key"] == "sale-1" and body["receipt"]["qr"]
        status, again = await post(http, INVOICE, "sale-1")
        assert (status, again["counter"], again["retry"]) == (200, 1, True)
        assert printer.fw.journal.count() == 1
        assert engine.wakes >= 1


async def test_a_device_is_selected_by_name_port_or_id(tmp_path: Path) -> None:
    async with till(tmp_path) as (printer, _engine, http):
        for n, selector in enumerate(["till", "loop://", printer.link.device_id], start=1):
            status, body = await post(http, {**INVOICE, "device": selector}, f"k{n}")
            assert (status, body["counter"]) == (201, n), body
        status, body = await post(http, {**INVOICE, "device": "elsewhere"}, "k9")
        assert (status, body["error"]) == (404, "UNKNOWN_DEVICE")
        assert printer.fw.journal.count() == 3


async def test_a_refused_request_issues_nothing_and_frees_its_key(tmp_path: Path) -> None:
    async with till(tmp_path) as (printer, _engine, http):
        status, body = await post(http, {"items": []}, "bad")
        assert (status, body["error"]) == (422, "TOO_MANY_ITEMS"), body  # the printer's refusal
        assert printer.fw.journal.count() == 0
        status, body = await post(http, INVOICE, "bad")  # the same key: a new attempt
        assert status == 201 and body["counter"] == 1


async def test_without_printers_the_api_says_so(tmp_path: Path) -> None:
    async with pos_api(tmp_path, []) as http:
        status, body = await post(http, INVOICE, "k")
        assert (status, body["error"]) == (503, "NO_DEVICE")
        resp = await http.get("/v1/health")
        assert resp.status == 200 and (await resp.json())["ok"] is True
