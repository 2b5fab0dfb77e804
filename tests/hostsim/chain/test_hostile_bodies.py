"""Hostile request bodies and parameters against a real chain process: each is refused
with a 4xx in bounded time and memory, and the chain answers /v1/health right after.

The chain runs as its own process so that a request which freezes it shows as a client
timeout here (instead of hanging the test's own event loop) and so that its memory can
be read from /proc: the peak resident size is reset before each request and compared
after it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import cbor2
import pytest
import pytest_asyncio

from hostsim.chain import wire
from tests.device.protocol.test_untrusted import sharing_bomb
from tests.helpers import Process, spawn

pytestmark = pytest.mark.asyncio

CBOR_TYPE = {"Content-Type": "application/cbor"}
JSON_TYPE = {"Content-Type": "application/json"}
DEVICE = "TC" + "0" * 12
SECONDS = 2.0  # "bounded time": a bomb that is not refused takes minutes, or forever
GROWTH = 64 * 1024 * 1024  # "bounded memory": the chain's peak RSS during one request


@dataclass
class ChainUnderTest:
    process: Process
    url: str
    admin_url: str
    token: str

    @property
    def pid(self) -> int:
        return self.process.proc.pid


@pytest.fixture(scope="module")
def chain_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChainUnderTest]:
    data = tmp_path_factory.mktemp("hostile") / "ledger"
    options = ["--training", "--faults", "--workers", "0", "--block-interval-ms", "5"]
    process = spawn(
        ["hostsim", "chain", "--data", str(data), "--listen", "127.0.0.1:0", *options],
        stderr=data.parent / "chain.log",
    )
    token = (data / "admin.token").read_text().strip()
    yield ChainUnderTest(process, process.ready["url"], process.ready["admin_url"], token)
    process.stop()


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=SECONDS * 3)
    async with aiohttp.ClientSession(timeout=timeout) as opened:
        yield opened


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _reset_peak(pid: int) -> None:
    # "5" resets the peak resident set size (VmHWM) to the current one (Linux 4.0+)
    Path(f"/proc/{pid}/clear_refs").write_text("5")


async def refused(
    chain: ChainUnderTest,
    session: aiohttp.ClientSession,
    url: str,
    data: bytes,
    headers: dict[str, str],
    status: int = 400,
    code: str = "bad_request",
) -> dict[str, Any]:
    """POST `data`: refused with `status`/`code` in bounded time and memory, the chain
    still answering afterwards. Returns the error body."""
    _reset_peak(chain.pid)
    before = _status_kb(chain.pid, "VmRSS")
    started = time.monotonic()
    async with session.post(url, data=data, headers=headers) as resp:
        answered = resp.status
        body = await resp.json()
    elapsed = time.monotonic() - started
    growth = _status_kb(chain.pid, "VmHWM") - before
    assert elapsed < SECONDS, f"answered after {elapsed:.1f} s"
    assert growth < GROWTH, f"the chain's peak memory grew by {growth >> 20} MiB"
    assert (answered, body["error"]["code"]) == (status, code), body
    assert len(body["error"]["message"]) <= 400
    async with session.get(f"{chain.url}/v1/health") as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "ok"
    return dict(body["error"])


def cbor_map(*pairs: tuple[bytes, bytes]) -> bytes:
    """A CBOR map from already encoded keys and values (a key may be any item)."""
    assert len(pairs) < 24
    return bytes([0xA0 + len(pairs)]) + b"".join(k + v for k, v in pairs)


BOMB = sharing_bomb(60)  # about 400 bytes; 2**60 leaves if expanded


def bombs(field: str) -> list[bytes]:
    """The bomb as the value of the route's first field (str() of it, as 查验 did, never
    ends), and as a map key (cbor2 turns a list key into nested tuples, expanding every
    shared reference while decoding: that froze every route)."""
    as_value = cbor_map((cbor2.dumps(field), BOMB))
    as_key = cbor_map((cbor2.dumps(field), cbor2.dumps("AA==")), (BOMB, b"\x01"))
    return [as_key, as_value]


def deep(fields: list[str], max_bytes: int) -> tuple[bytes, bytes]:
    """A field nested 100,000 deep in JSON and in CBOR, or as deep as the route's body
    limit allows (a larger body is refused for its size, before it is read)."""
    depth = min(100_000, (max_bytes - 100) // 2)
    as_json = b'{"' + fields[0].encode() + b'": ' + b"[" * depth + b"]" * depth + b"}"
    as_cbor = cbor_map((cbor2.dumps(fields[0]), b"\x81" * depth + b"\x80"))
    return as_json, as_cbor


ROUTES: list[tuple[str, str, list[str], bool, wire.BodyRule]] = [
    # (where, path, the body's fields, needs the bureau admin token, its body rule)
    ("api", "/v1/documents", ["documents"], False, wire.DOCUMENTS),
    ("api", "/v1/verify", ["payload", "code", "number", "date", "check_code"], False, wire.FLAT),
    ("api", "/v1/devices", ["certificate", "segments"], False, wire.LISTS),
    ("api", f"/v1/devices/{DEVICE}/segments", ["segment", "count"], False, wire.FLAT),
    ("api", f"/v1/devices/{DEVICE}/revoke", ["reason"], True, wire.FLAT),
    ("api", "/v1/buyers", ["tax_id", "name"], True, wire.FLAT),
    ("admin", "/admin/faults", ["mode", "latency_ms"], False, wire.FLAT),
    ("admin", "/admin/partition", ["nodes"], False, wire.LISTS),
]
ROUTE_NAMES = ("where", "path", "fields", "admin", "rule")


def _target(
    chain: ChainUnderTest, where: str, path: str, admin: bool
) -> tuple[str, dict[str, str]]:
    base = chain.url if where == "api" else chain.admin_url
    return base + path, {"Authorization": f"Bearer {chain.token}"} if admin else {}


@pytest.mark.parametrize(ROUTE_NAMES, ROUTES, ids=[r[1] for r in ROUTES])
async def test_a_value_sharing_bomb_is_refused_on_every_route(
    chain_proc: ChainUnderTest,
    session: aiohttp.ClientSession,
    where: str,
    path: str,
    fields: list[str],
    admin: bool,
    rule: wire.BodyRule,
) -> None:
    url, auth = _target(chain_proc, where, path, admin)
    for data in bombs(fields[0]):
        assert len(data) < 500
        error = await refused(chain_proc, session, url, data, auth | CBOR_TYPE)
        # the first bound the walk meets: the tag, or (on a route of flat maps) its depth
        assert error["message"].startswith("body refused: CBOR refused: "), error


@pytest.mark.parametrize(ROUTE_NAMES, ROUTES, ids=[r[1] for r in ROUTES])
async def test_nesting_100000_deep_is_refused_on_every_route(
    chain_proc: ChainUnderTest,
    session: aiohttp.ClientSession,
    where: str,
    path: str,
    fields: list[str],
    admin: bool,
    rule: wire.BodyRule,
) -> None:
    url, auth = _target(chain_proc, where, path, admin)
    as_json, as_cbor = deep(fields, rule.max_bytes)
    error = await refused(chain_proc, session, url, as_json, auth | JSON_TYPE)
    assert error["message"].startswith("body refused: "), error
    error = await refused(chain_proc, session, url, as_cbor, auth | CBOR_TYPE)
    assert "nested deeper than" in error["message"]


async def test_a_json_body_of_millions_of_tiny_values_is_refused_before_parsing(
    chain_proc: ChainUnderTest, session: aiohttp.ClientSession
) -> None:
    """30 MB of `[],` under the 32 MiB limit: json.loads alone took 7 s and 1.4 GB."""
    flood = b'{"documents": [' + b"[]," * 10_000_000 + b"[]]}"
    url = f"{chain_proc.url}/v1/documents"
    error = await refused(chain_proc, session, url, flood, JSON_TYPE)
    assert "JSON separators, for at most 20000 items" in error["message"]


async def test_small_routes_refuse_large_bodies_before_reading_them(
    chain_proc: ChainUnderTest, session: aiohttp.ClientSession
) -> None:
    padding = b'{"payload": "' + b"a" * (1024 * 1024) + b'"}'
    url = f"{chain_proc.url}/v1/verify"
    await refused(chain_proc, session, url, padding, JSON_TYPE, 413, "body_too_large")


async def test_a_long_verification_payload_is_not_echoed(
    chain_proc: ChainUnderTest, session: aiohttp.ClientSession
) -> None:
    """qr.parse names unknown fields in its refusal: a payload of thousands of them was
    answered with all of their names."""
    payload = "taxctl:v1?" + "&".join(f"f{i}=1" for i in range(5000))
    url = f"{chain_proc.url}/v1/verify"
    body = cbor2.dumps({"payload": payload})
    error = await refused(chain_proc, session, url, body, CBOR_TYPE)
    assert "f4999" not in error["message"]


@pytest.mark.parametrize(
    "query",
    [
        {"wait": "nan"},
        {"wait": "inf"},
        {"wait": "1e999"},
        {"wait": "-0.5"},
        {"wait": "9" * 4000},
        {"receipts": "compact" * 500},
    ],
)
async def test_hostile_query_parameters_are_refused(
    chain_proc: ChainUnderTest, session: aiohttp.ClientSession, query: dict[str, str]
) -> None:
    url = f"{chain_proc.url}/v1/documents"
    async with session.post(url, json={"documents": ["AA=="]}, params=query) as resp:
        body = await resp.json()
        assert (resp.status, body["error"]["code"]) == (400, "bad_request"), body
        assert len(body["error"]["message"]) <= 400


@pytest.mark.parametrize(
    "path",
    [
        "/v1/blocks/" + "٣" * 3,  # Arabic-Indic digits: int() reads them, the API does not
        "/v1/blocks/9999999999999",
        f"/v1/devices/{DEVICE}/documents?after=" + "٣",
        f"/v1/devices/{DEVICE}/documents?limit=" + "9" * 5000,
        "/v1/tx/" + "0" * 5000,
        "/v1/verify?q=" + "x" * 6000,
        "/v1/verify?c=1&c=2&c=3&n=4",
    ],
)
async def test_hostile_path_and_query_values_get_a_4xx(
    chain_proc: ChainUnderTest, session: aiohttp.ClientSession, path: str
) -> None:
    async with session.get(chain_proc.url + path) as resp:
        assert 400 <= resp.status < 500, (path, resp.status)
        body = await resp.json()
        assert len(body["error"]["message"]) <= 400
    async with session.get(f"{chain_proc.url}/v1/health") as resp:
        assert resp.status == 200


async def test_punctuation_inside_strings_is_not_counted_against_a_body(
    chain_proc: ChainUnderTest, session: aiohttp.ClientSession
) -> None:
    """The separator count before parsing over-counts strings; it must leave room for a
    legitimate text full of commas (the refusal here is the next check's: no device)."""
    url, auth = _target(chain_proc, "api", f"/v1/devices/{DEVICE}/revoke", True)
    async with session.post(url, json={"reason": ",:[{" * 50}, headers=auth) as resp:
        body = await resp.json()
        assert (resp.status, body["error"]["code"]) == (404, "unknown_device"), body


async def test_a_batch_of_costly_documents_does_not_freeze_the_chain(
    chain_proc: ChainUnderTest, session: aiohttp.ClientSession
) -> None:
    """1000 documents of 20 kB, each a signed payload of 20,000 items (within every bound,
    refused only once decoded): validating them took 12 s in the event loop, and for those
    12 s the chain answered nothing, /v1/health included. The batch still costs its time;
    everybody else is answered meanwhile."""
    from device.protocol import cose
    from device.protocol.keys import KeyPair

    document = cose.sign1(cbor2.dumps([0] * 19_990), KeyPair.derive("x"), DEVICE.encode())
    body = cbor2.dumps({"documents": [document] * 1000})
    url = f"{chain_proc.url}/v1/documents?wait=0"
    slow = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=slow) as batch_session:
        post = asyncio.create_task(batch_session.post(url, data=body, headers=CBOR_TYPE))
        await asyncio.sleep(0.3)  # the body is in: validation has begun
        probes = []
        while not post.done():
            started = time.monotonic()
            async with session.get(f"{chain_proc.url}/v1/health") as resp:
                assert resp.status == 200
            probes.append(time.monotonic() - started)
            await asyncio.sleep(0.05)
        async with await post as resp:
            answer = await resp.json()
    assert resp.status == 200 and answer["counts"] == {"rejected": 1000}, answer["counts"]
    assert probes and max(probes) < 1.0, f"/v1/health took {max(probes):.1f} s"
