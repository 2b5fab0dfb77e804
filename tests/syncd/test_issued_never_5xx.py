"""A document the printer has signed never gets a 5xx from the POS API.

The attack (or accident): the printer issues an invoice, but syncd cannot
check or render its answer; the POS got 500 "try again", and a retry with a
new key issued a second invoice for the same sale.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from device.app import open_device
from device.firmware import Firmware
from device.protocol.clock import ManualClock
from device.protocol.keys import KeyPair
from device.server import DeviceServer
from device.transport import create_pty
from syncd import api as api_mod
from syncd.api import ApiContext, PosApi
from syncd.config import DeviceConfig
from syncd.idempotency import IdempotencyStore
from syncd.link import DeviceLink, LinkSettings
from syncd.metrics import SyncdMetrics
from tests.device.conftest import INVOICE, wide_limits


@pytest.fixture
async def till(tmp_path: Path) -> AsyncIterator[tuple[Firmware, DeviceLink, TestClient[Any, Any]]]:
    fw = open_device(tmp_path / "device", training=True, clock=ManualClock(), limits=wide_limits())
    device_port = create_pty(tmp_path / "tty")
    device_stop = asyncio.Event()
    device_task = asyncio.create_task(DeviceServer(fw, device_port).serve(device_stop))
    link = DeviceLink(
        DeviceConfig(port=str(tmp_path / "tty"), name="till-1"),
        LinkSettings(response_timeout=0.5, status_interval=0.2, reopen_max=0.1),
    )
    link_stop = asyncio.Event()
    link_task = asyncio.create_task(link.run(link_stop))
    store = IdempotencyStore(tmp_path / "syncd")
    ctx = ApiContext(
        links=[link], store=store, metrics=SyncdMetrics(), status=dict, wake=lambda _link: None
    )
    http = TestClient(TestServer(PosApi(ctx).app()))
    await http.start_server()
    try:
        assert await link.wait_online(10)
        yield fw, link, http
    finally:
        await http.close()
        link_stop.set()
        await asyncio.wait_for(link_task, 10)
        await link.close()
        store.close()
        device_stop.set()
        await asyncio.wait_for(device_task, 10)
        device_port.close()
        fw.close()


async def post(http: TestClient[Any, Any], key: str) -> tuple[int, dict[str, Any]]:
    resp = await http.post("/v1/invoices", json=INVOICE, headers={"Idempotency-Key": key})
    return resp.status, await resp.json()


async def test_a_document_that_does_not_verify_is_201_with_a_warning(
    till: tuple[Firmware, DeviceLink, TestClient[Any, Any]],
) -> None:
    fw, link, http = till
    assert link.info is not None
    link.info["public_key"] = KeyPair.generate().public_key  # syncd's idea of the key is off
    status, body = await post(http, "sale-1")
    assert status == 201, body
    assert body["warning"]["code"] == "DOCUMENT_UNCHECKED"
    assert body["counter"] == 1 and body["code"] and body["number"] == "00000001"
    assert body["cose_sign1"] and body["idempotency_key"] == "sale-1"
    # The retry with the same key is the same document, never a second one.
    again_status, again = await post(http, "sale-1")
    assert (again_status, again["counter"], again["retry"]) == (200, 1, True)
    assert fw.journal.count() == 1


async def test_a_rendering_failure_is_201_with_a_warning(
    till: tuple[Firmware, DeviceLink, TestClient[Any, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    fw, _, http = till

    def broken(*_: Any, **__: Any) -> dict[str, Any]:
        raise ValueError("a renderer bug")

    monkeypatch.setattr(api_mod, "document_json", broken)
    status, body = await post(http, "sale-2")
    assert status == 201, body
    assert body["warning"]["code"] == "DOCUMENT_UNCHECKED" and body["counter"] == 1
    assert fw.journal.count() == 1
