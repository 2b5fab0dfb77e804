"""Chain test fixtures: real device firmware (in-process) as the document source,
a chain opened on a temp directory, and its HTTP API on a loopback port."""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer

from device import read_commands
from device.app import open_device
from device.firmware import Firmware
from device.limits import Limits
from device.protocol import trust
from hostsim.chain.api import build_app
from hostsim.chain.node import Chain

BUYER_TAX_ID = "91440300MA5G12345L"


def invoice_body(
    total_units: int = 1, price: int = 1000, buyer_tax_id: str | None = None
) -> dict[str, Any]:
    buyer: dict[str, Any] = {"name": "Buyer Co"}
    if buyer_tax_id:
        buyer["tax_id"] = buyer_tax_id
    return {
        "buyer": buyer,
        "items": [
            {"name": "Tea", "quantity": str(total_units), "unit_price": price, "tax_rate_bp": 1300}
        ],
    }


class DeviceSim:
    """A training device's firmware, driven directly: documents exactly as a device signs them."""

    def __init__(self, path: Path) -> None:
        self.fw: Firmware = open_device(
            path, training=True, limits=Limits(offline_seconds=10**9, offline_amount=10**15)
        )

    @property
    def device_id(self) -> str:
        return self.fw.settings.device_id

    @property
    def certificate(self) -> bytes:
        assert self.fw.credentials.cert is not None
        return self.fw.credentials.cert.raw

    @property
    def segments(self) -> list[bytes]:
        return self.fw.credentials.live_segments()

    def _commit(self) -> list[bytes]:
        return [row.doc for row in self.fw.commit_pending().documents]

    def issue(self, count: int = 1, **kwargs: Any) -> list[bytes]:
        for _ in range(count):
            self.fw.issue(invoice_body(**kwargs))
        return self._commit()

    def credit(
        self,
        code: str,
        number: str,
        items: list[dict[str, Any]] | None = None,
        confirmation: str | None = None,
    ) -> bytes:
        body: dict[str, Any] = {"refers_to": {"code": code, "number": number}, "reason": "returned"}
        if items is not None:
            body["items"] = items
        if confirmation is not None:
            body["confirmation"] = confirmation
        self.fw.credit(body)
        return self._commit()[0]

    def segment_request(self, count: int) -> bytes:
        """A segment request as the device signs it (SEGMENT_REQUEST)."""
        return bytes(read_commands.segment_request(self.fw, {"count": count})["request"])

    def signed_request(
        self, count: int, *, at: float | None = None, device_id: str | None = None
    ) -> bytes:
        """A request signed by this device's key with any field, as an attacker could."""
        return trust.make_segment_request(
            self.fw.key,
            device_id or self.device_id,
            count,
            time.time() if at is None else at,
            secrets.token_bytes(trust.SEGMENT_NONCE_SIZE),
        )

    def close(self) -> None:
        self.fw.journal.close()


@pytest.fixture
def device_factory(tmp_path: Path) -> Iterator[Any]:
    made: list[DeviceSim] = []

    def make() -> DeviceSim:
        sim = DeviceSim(tmp_path / f"device{len(made)}")
        made.append(sim)
        return sim

    yield make
    for sim in made:
        sim.close()


@pytest.fixture
def device(device_factory: Any) -> DeviceSim:
    return device_factory()


@pytest_asyncio.fixture
async def chain(tmp_path: Path) -> AsyncIterator[Chain]:
    opened = Chain.open(tmp_path / "chain", training=True, block_interval=0.005)
    opened.engine.start()
    yield opened
    await opened.engine.stop()
    opened.close()


class Api:
    """The chain's HTTP API on a loopback port, with JSON helpers."""

    def __init__(self, chain: Chain, server: TestServer, session: aiohttp.ClientSession) -> None:
        self.chain, self.server, self.session = chain, server, session
        # The auditor's credential (the bureau's admin token): reads every route.
        self.audit = {"Authorization": f"Bearer {chain.bureau.admin_token}"}

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with self.session.request(method, self.url(path), **kwargs) as resp:
            return resp.status, await resp.json()

    async def register(self, sim: DeviceSim) -> dict[str, Any]:
        status, body = await self.call(
            "POST",
            "/v1/devices",
            json={"certificate": b64(sim.certificate), "segments": [b64(s) for s in sim.segments]},
        )
        assert status == 201, body
        return body

    async def submit(self, docs: list[bytes], **params: Any) -> list[dict[str, Any]]:
        status, body = await self.call(
            "POST", "/v1/documents", json={"documents": [b64(d) for d in docs]}, params=params
        )
        assert status == 200, body
        return body["results"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest_asyncio.fixture
async def api(chain: Chain) -> AsyncIterator[Api]:
    server = TestServer(build_app(chain), host="127.0.0.1")
    await server.start_server()
    session = aiohttp.ClientSession()
    try:
        yield Api(chain, server, session)
    finally:
        await session.close()
        await server.close()
        await asyncio.sleep(0)


def resign(sim: DeviceSim, raw: bytes, key: Any = None, **changes: Any) -> bytes:
    """The document with some fields changed, signed again (by the device's key unless given)."""
    from device.protocol.document import parse_document, sign_document

    payload = dict(parse_document(raw).payload)
    payload.pop("check_code")
    payload.update(changes)
    return sign_document(key or sim.fw.key, payload)[0]


async def snapshot(api: Api, device_id: str) -> tuple[Any, ...]:
    """Everything a rejected document must leave unchanged."""
    engine = api.chain.engine
    _, dev = await api.call("GET", f"/v1/devices/{device_id}", headers=api.audit)
    invoices = api.chain.ledger.db.execute(
        "SELECT count(*), sum(credited) FROM invoices"
    ).fetchone()
    return (
        engine.height,
        len(engine.mempool),
        dev.get("last_counter"),
        dev.get("accepted_counter"),
        dev.get("last_hash"),
        tuple(invoices),
        engine.state.held_count(),
    )
