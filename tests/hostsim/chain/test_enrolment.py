"""Who may register a printer and get invoice numbers on a production chain.

Each attack of issue 16 item 1, through the chain's HTTP API: registration
without a bureau enrolment code, with another taxpayer's, a used-up or an
expired one; segment requests unsigned, signed by another device, for
another device, oversized, over the outstanding cap, replayed (also after
a restart), stale, for a revoked or unknown device. Every refusal creates
nothing: no certificate signed, no device, no code use, no segment.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer

from device.protocol import trust
from device.protocol.clock import ManualClock
from device.protocol.keys import KeyPair
from hostsim.chain.api import build_app
from hostsim.chain.node import Chain
from tests.helpers import Process, run_taxctl, spawn
from tests.hostsim.chain.conftest import Api, b64

SHOP = {"name": "ACME Trading", "tax_id": "91350100M000100Y43"}
OTHER = {"name": "Other Shop", "tax_id": "91440300MA5G12345L"}


class Prod:
    """A production chain with a manual clock, its API, and an admin session."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.clock = ManualClock(time.time())
        self._api: Api | None = None

    @property
    def api(self) -> Api:
        assert self._api is not None, "the chain is not running"
        return self._api

    @property
    def chain(self) -> Chain:
        return self.api.chain

    async def start(self) -> Api:
        chain = Chain.open(self.directory, training=False, clock=self.clock, block_interval=0.005)
        chain.engine.start()
        server = TestServer(build_app(chain), host="127.0.0.1")
        await server.start_server()
        self._api = Api(chain, server, aiohttp.ClientSession())
        return self._api

    async def stop(self) -> None:
        await self.api.session.close()
        await self.api.server.close()
        await self.chain.engine.stop()
        self.chain.close()
        self._api = None

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.chain.bureau.admin_token}"}

    async def enrol(self, taxpayer: dict[str, str] = SHOP, **extra: Any) -> str:
        body = {"tax_id": taxpayer["tax_id"], "name": taxpayer["name"], **extra}
        status, answer = await self.api.call(
            "POST", "/admin/enrolments", json=body, headers=self.admin
        )
        assert status == 201, answer
        return str(answer["code"])

    def snapshot(self) -> tuple[int, int, int, int]:
        """(height, devices, segments, code uses): what a refusal must leave as it was."""
        db = self.chain.ledger.db
        uses = db.execute("SELECT count(*) FROM enrolment_uses").fetchone()[0]
        return (
            self.chain.engine.height,
            len(self.chain.engine.state.devices),
            sum(len(d.segments) for d in self.chain.engine.state.devices.values()),
            uses,
        )


@pytest_asyncio.fixture
async def prod(tmp_path: Path) -> AsyncIterator[Prod]:
    chain = Prod(tmp_path / "prod")
    await chain.start()
    yield chain
    await chain.stop()


class Printer:
    """A production device's key: it signs CSRs and segment requests as the firmware does."""

    def __init__(self, taxpayer: dict[str, str] = SHOP) -> None:
        self.key = KeyPair.generate()
        self.device_id = trust.device_id_for(self.key.public_key)
        self.csr = trust.make_csr(self.key, taxpayer, False, time.time())

    def request(
        self, count: int, *, at: float | None = None, device_id: str | None = None
    ) -> bytes:
        return trust.make_segment_request(
            self.key,
            device_id or self.device_id,
            count,
            time.time() if at is None else at,
            secrets.token_bytes(trust.SEGMENT_NONCE_SIZE),
        )


async def register(api: Api, printer: Printer, code: str | None) -> tuple[int, Any]:
    body: dict[str, Any] = {"csr": b64(printer.csr)}
    if code is not None:
        body["enrolment_code"] = code
    return await api.call("POST", "/v1/devices", json=body)


async def segment(api: Api, device_id: str, body: dict[str, Any]) -> tuple[int, Any]:
    return await api.call("POST", f"/v1/devices/{device_id}/segments", json=body)


def refused(answer: tuple[int, Any]) -> tuple[int, str]:
    return answer[0], answer[1]["error"]["code"]


@pytest.fixture
def certify_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Every certificate the bureau signs, so a test can say none was."""
    from hostsim.bureau import Bureau

    calls: list[object] = []
    real = Bureau.certify

    def counting(self: Bureau, *args: Any, **kwargs: Any) -> bytes:
        calls.append(args)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Bureau, "certify", counting)
    yield calls


# --- registration --------------------------------------------------------------------------


async def test_registration_without_a_code_is_refused_and_signs_nothing(
    prod: Prod, certify_calls: list[object]
) -> None:
    api, printer = prod.api, Printer()
    before = prod.snapshot()
    assert refused(await register(api, printer, None)) == (403, "enrolment_required")
    assert refused(await register(api, printer, "ENR-0000-0000-0000-0000")) == (
        403,
        "enrolment_invalid",
    )
    assert refused(await register(api, printer, "not a code")) == (403, "enrolment_invalid")
    assert prod.snapshot() == before and certify_calls == []
    status, _ = await api.call("GET", f"/v1/devices/{printer.device_id}", headers=api.audit)
    assert status == 404


async def test_another_taxpayers_code_is_refused_and_not_used(
    prod: Prod, certify_calls: list[object]
) -> None:
    api = prod.api
    theirs = await prod.enrol(OTHER)
    before = prod.snapshot()
    assert refused(await register(api, Printer(SHOP), theirs)) == (403, "enrolment_taxpayer")
    assert prod.snapshot() == before and certify_calls == []
    status, body = await register(api, Printer(OTHER), theirs)  # the code is still whole
    assert status == 201, body


async def test_a_used_up_code_is_refused_and_a_repeated_csr_signs_nothing(
    prod: Prod, certify_calls: list[object]
) -> None:
    api = prod.api
    code = await prod.enrol(SHOP, devices=2)
    first, second, third = Printer(), Printer(), Printer()
    one = await register(api, first, code)
    assert one[0] == 201, one
    assert (await register(api, second, code))[0] == 201
    assert len(certify_calls) == 2
    before = prod.snapshot()
    assert refused(await register(api, third, code)) == (403, "enrolment_used")
    # the same CSR again (with the code or without): the certificate issued, nothing signed
    for again in (code, None):
        status, body = await register(api, first, again)
        assert (status, body["certificate"]) == (201, one[1]["certificate"])
    assert prod.snapshot() == before and len(certify_calls) == 2


async def test_an_expired_code_is_refused(prod: Prod) -> None:
    api = prod.api
    code = await prod.enrol(SHOP, expires_in=3600)
    prod.clock.advance(3600)
    before = prod.snapshot()
    assert refused(await register(api, Printer(), code)) == (403, "enrolment_expired")
    assert prod.snapshot() == before


async def test_codes_survive_a_restart_and_only_their_hash_is_stored(prod: Prod) -> None:
    code = await prod.enrol(SHOP, devices=2)
    api = prod.api
    assert code.startswith("ENR-") and len(code) == 23
    assert (await register(api, Printer(), code))[0] == 201
    await prod.stop()
    ledger = b"".join(p.read_bytes() for p in prod.directory.glob("ledger.sqlite*"))
    assert code.encode() not in ledger and code[4:].encode() not in ledger
    api = await prod.start()
    assert (await register(api, Printer(), code))[0] == 201
    assert refused(await register(api, Printer(), code)) == (403, "enrolment_used")


async def test_enrolment_needs_the_admin_token_and_a_sound_body(prod: Prod) -> None:
    api = prod.api
    body = {"tax_id": SHOP["tax_id"], "name": SHOP["name"]}
    for headers in ({}, {"Authorization": "Bearer nope"}):
        answer = await api.call("POST", "/admin/enrolments", json=body, headers=headers)
        assert refused(answer) == (401, "unauthorized")
    for bad in ({"devices": 101}, {"devices": True}, {"expires_in": 91 * 86400}, {"tax_id": "1"}):
        answer = await api.call("POST", "/admin/enrolments", json=body | bad, headers=prod.admin)
        assert refused(answer) == (400, "bad_request")
    rows = prod.chain.ledger.db.execute("SELECT count(*) FROM enrolments").fetchone()
    assert rows[0] == 0


async def test_a_training_chain_certifies_a_training_csr_without_a_code(tmp_path: Path) -> None:
    chain = Chain.open(tmp_path / "training", training=True, block_interval=0.005)
    chain.engine.start()
    try:
        csr = trust.make_csr(KeyPair.generate(), SHOP, True, time.time())
        out = await chain.acts.register(csr, None, [], 5)
        assert trust.open_certificate(out["certificate"], chain.bureau.public_key).training
    finally:
        await chain.engine.stop()
        chain.close()


# --- segment requests ----------------------------------------------------------------------


async def registered(prod: Prod, *taxpayers: dict[str, str]) -> list[Printer]:
    api = prod.api
    printers = []
    for taxpayer in taxpayers:
        printer = Printer(taxpayer)
        status, body = await register(api, printer, await prod.enrol(taxpayer))
        assert status == 201, body
        printers.append(printer)
    return printers


async def test_an_unsigned_segment_request_is_refused(prod: Prod) -> None:
    [printer] = await registered(prod, SHOP)
    before = prod.snapshot()
    answer = await segment(prod.api, printer.device_id, {"count": 1000})
    assert refused(answer) == (403, "signature_required")
    assert prod.snapshot() == before


async def test_a_signed_request_gets_a_segment(prod: Prod) -> None:
    [printer] = await registered(prod, SHOP)
    status, body = await segment(
        prod.api, printer.device_id, {"request": b64(printer.request(500))}
    )
    assert status == 201, body
    assert (body["device_id"], body["start"], body["end"]) == (printer.device_id, 1, 500)


async def test_requests_signed_by_or_for_another_device_are_refused(prod: Prod) -> None:
    victim, attacker = await registered(prod, SHOP, OTHER)
    api = prod.api
    before = prod.snapshot()
    cases = [
        # the attacker's request, sent to the victim's URL
        (victim.device_id, attacker.request(100)),
        # the attacker's key, naming the victim in the payload
        (victim.device_id, attacker.request(100, device_id=victim.device_id)),
        # the victim's request sent to the attacker's URL (numbers for another device)
        (attacker.device_id, victim.request(100)),
    ]
    for device_id, raw in cases:
        assert refused(await segment(api, device_id, {"request": b64(raw)})) == (
            403,
            "bad_signature",
        )
    assert prod.snapshot() == before


async def test_oversized_and_over_the_cap_requests_are_refused(prod: Prod) -> None:
    [printer] = await registered(prod, SHOP)
    api = prod.api
    before = prod.snapshot()
    answer = await segment(api, printer.device_id, {"request": b64(printer.request(100_001))})
    assert refused(answer) == (400, "segment_too_large")
    assert prod.snapshot() == before
    for _ in range(2):
        answer = await segment(api, printer.device_id, {"request": b64(printer.request(100_000))})
        assert answer[0] == 201, answer
    before = prod.snapshot()
    answer = await segment(api, printer.device_id, {"request": b64(printer.request(1))})
    assert refused(answer) == (409, "segment_cap")
    assert prod.snapshot() == before


async def test_a_replayed_request_is_refused_also_after_a_restart(prod: Prod) -> None:
    [printer] = await registered(prod, SHOP)
    api = prod.api
    raw = printer.request(10)
    assert (await segment(api, printer.device_id, {"request": b64(raw)}))[0] == 201
    before = prod.snapshot()
    assert refused(await segment(api, printer.device_id, {"request": b64(raw)})) == (
        409,
        "request_replayed",
    )
    await prod.stop()
    api = await prod.start()
    assert refused(await segment(api, printer.device_id, {"request": b64(raw)})) == (
        409,
        "request_replayed",
    )
    assert prod.snapshot() == before


async def test_a_stale_request_is_refused(prod: Prod) -> None:
    [printer] = await registered(prod, SHOP)
    before = prod.snapshot()
    for at in (time.time() - 86_401 - 60, time.time() + 86_401 + 60):
        raw = printer.request(10, at=at)
        answer = await segment(prod.api, printer.device_id, {"request": b64(raw)})
        assert refused(answer) == (400, "request_stale")
    assert prod.snapshot() == before


async def test_requests_for_a_revoked_or_unknown_device_are_refused(prod: Prod) -> None:
    [printer] = await registered(prod, SHOP)
    api = prod.api
    revoke = f"/v1/devices/{printer.device_id}/revoke"
    status, _ = await api.call("POST", revoke, json={"reason": "stolen"}, headers=prod.admin)
    assert status == 200
    before = prod.snapshot()
    answer = await segment(api, printer.device_id, {"request": b64(printer.request(10))})
    assert refused(answer) == (403, "device_revoked")
    stranger = Printer()
    answer = await segment(api, stranger.device_id, {"request": b64(stranger.request(10))})
    assert refused(answer) == (404, "unknown_device")
    assert prod.snapshot() == before


# --- the bureau's command line, against a real chain process -------------------------------


@pytest.fixture
def chain_process(tmp_path: Path) -> Iterator[tuple[Process, Path]]:
    data = tmp_path / "ledger"
    args = ["hostsim", "chain", "--data", str(data), "--listen", "127.0.0.1:0"]
    proc = spawn([*args, "--block-interval-ms", "5", "--workers", "0"])
    yield proc, data
    proc.stop()


def test_bureau_enrol_cli_issues_a_code_a_printer_registers_with(
    chain_process: tuple[Process, Path], tmp_path: Path
) -> None:
    import json

    import requests

    proc, data = chain_process
    url = proc.ready["url"]
    token = data / "admin.token"
    base = ["hostsim", "bureau", "enrol", "--chain", url, "--taxpayer", SHOP["tax_id"]]
    out = run_taxctl(*base, "--name", SHOP["name"], "--token-file", str(token))
    assert out.returncode == 0, out.stderr
    code = out.stdout.strip()
    assert len(out.stdout.splitlines()) == 1 and code.startswith("ENR-")
    printer = Printer()
    body = {"csr": b64(printer.csr), "enrolment_code": code}
    answer = requests.post(f"{url}/v1/devices", json=body, timeout=30)
    assert answer.status_code == 201, answer.text
    again = requests.post(
        f"{url}/v1/devices", json={"csr": b64(Printer().csr), "enrolment_code": code}, timeout=30
    )
    assert (again.status_code, again.json()["error"]["code"]) == (403, "enrolment_used")

    more = ["--name", SHOP["name"], "--token-file", str(token), "--devices", "3"]
    out = run_taxctl(*base, *more, "--expires", "12h", "--json")
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["devices"] == 3 and answer["tax_id"] == SHOP["tax_id"]

    wrong = tmp_path / "wrong.token"
    wrong.write_text("not the token\n")
    out = run_taxctl(*base, "--name", SHOP["name"], "--token-file", str(wrong))
    assert out.returncode == 1 and "unauthorized" in out.stderr and out.stdout == ""
    out = run_taxctl(*base, "--name", SHOP["name"], "--token-file", str(token), "--expires", "soon")
    assert out.returncode == 2 and "duration" in out.stderr
