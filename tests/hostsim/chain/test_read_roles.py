"""Who may read what (C3): documents, device ledgers and buyer data need the auditor's admin
token, the seller's taxpayer token or (for an invoice) the key of the buyer it names; 查验
stays public, answers only what the receipt shows, and is rate-limited per client so the
six check-code digits cannot be brute-forced."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer

from device.protocol.clock import ManualClock
from device.protocol.document import Document, parse_document
from hostsim.bureau import buyer_key_hash
from hostsim.chain.api import build_app
from hostsim.chain.checking import query_from
from hostsim.chain.errors import ChainError, Code
from hostsim.chain.queries import VERIFY_BUCKETS
from hostsim.chain.ratelimit import Buckets, RateLimit
from tests.hostsim.chain.conftest import BUYER_TAX_ID, Api, DeviceSim

OTHER_TAX_ID = "91110108MA01ABCD2H"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def committed(api: Api, sim: DeviceSim, count: int = 1) -> list[Document]:
    await api.register(sim)
    raws = sim.issue(count, buyer_tax_id=BUYER_TAX_ID)
    assert {r["status"] for r in await api.submit(raws)} == {"committed"}
    return [parse_document(raw) for raw in raws]


async def buyer_key(api: Api, tax_id: str) -> str:
    status, body = await api.call(
        "POST", "/v1/buyers", json={"tax_id": tax_id, "name": "Buyer"}, headers=api.audit
    )
    assert status == 201, body
    return str(body["api_key"])


def seller_token(api: Api, tax_id: str, token: str) -> dict[str, str]:
    api.chain.ledger.add_taxpayer_token(tax_id, buyer_key_hash(token))
    return bearer(token)


async def test_each_reading_route_needs_a_credential_that_covers_it(
    api: Api, device: DeviceSim
) -> None:
    doc = (await committed(api, device))[0]
    seller_tax_id = doc.payload["seller"]["tax_id"]
    seller = seller_token(api, seller_tax_id, "seller-token")
    other_seller = seller_token(api, OTHER_TAX_ID, "other-seller-token")
    buyer = bearer(await buyer_key(api, BUYER_TAX_ID))
    stranger = bearer(await buyer_key(api, OTHER_TAX_ID))
    routes = {
        "device": f"/v1/devices/{device.device_id}",
        "documents": f"/v1/devices/{device.device_id}/documents",
        "invoice": f"/v1/invoices/{doc.code}/{doc.number}",
    }
    allowed: dict[str, list[dict[str, str]]] = {
        "device": [api.audit, seller],
        "documents": [api.audit, seller],
        "invoice": [api.audit, seller, buyer],
    }
    for name, path in routes.items():
        for headers, status, code in [
            ({}, 401, "unauthorized"),
            (bearer("not-a-credential"), 401, "unauthorized"),
            ({"Authorization": "Basic abc"}, 401, "unauthorized"),
        ]:
            got, body = await api.call("GET", path, headers=headers)
            assert (got, body["error"]["code"]) == (status, code), (name, headers, body)
            assert "cose_sign1" not in json.dumps(body) and doc.check_code not in json.dumps(body)
        refused = [other_seller, stranger] + ([] if name == "invoice" else [buyer])
        for headers in refused:
            got, body = await api.call("GET", path, headers=headers)
            assert (got, body["error"]["code"]) == (403, "forbidden"), (name, body)
        for headers in allowed[name]:
            got, body = await api.call("GET", path, headers=headers)
            assert got == 200, (name, body)
    _, answer = await api.call("GET", routes["invoice"], headers=buyer)
    assert answer["document"]["buyer"]["tax_id"] == BUYER_TAX_ID


async def test_a_seller_reads_only_its_own_devices_and_invoices(
    api: Api, device_factory: Any
) -> None:
    mine, theirs = device_factory(), device_factory()
    doc = (await committed(api, mine))[0]
    other = (await committed(api, theirs))[0]
    # training devices share the training taxpayer: give the other one's ledger its own id
    api.chain.ledger.db.execute(
        "UPDATE invoices SET seller_tax_id=? WHERE code=? AND number=?",
        (OTHER_TAX_ID, other.code, other.number),
    )
    seller = seller_token(api, doc.payload["seller"]["tax_id"], "seller-token")
    got, _ = await api.call("GET", f"/v1/invoices/{doc.code}/{doc.number}", headers=seller)
    assert got == 200
    got, body = await api.call("GET", f"/v1/invoices/{other.code}/{other.number}", headers=seller)
    assert (got, body["error"]["code"]) == (403, "forbidden")


async def test_verify_answers_only_what_the_receipt_shows(api: Api, device: DeviceSim) -> None:
    doc = (await committed(api, device))[0]
    question = {
        "code": doc.code,
        "number": doc.number,
        "date": doc.payload["issued_at"][:10],
        "check_code": str(doc.check_code)[-6:],
    }
    status, answer = await api.call("POST", "/v1/verify", json=question)
    assert status == 200 and answer["result"] == "authentic"
    text = json.dumps(answer, ensure_ascii=False)
    assert str(doc.check_code) not in text and str(doc.check_code)[-6:] not in text
    assert BUYER_TAX_ID not in text and "Buyer Co" not in text and "Tea" not in text
    assert set(answer) == {
        "result",
        "code",
        "number",
        "training",
        "kind",
        "state",
        "issued_at",
        "total",
        "credited",
        "device_id",
        "seller",
        "height",
        "claimed",
    }
    assert set(answer["seller"]) == {"name", "tax_id"}
    assert (answer["kind"], answer["credited"], answer["device_id"]) == (
        "invoice",
        0,
        device.device_id,
    )


@pytest_asyncio.fixture
async def limited(api: Api) -> AsyncIterator[tuple[Api, ManualClock]]:
    """The API again with a small 查验 limit on a clock the test moves."""
    clock = ManualClock()
    app = build_app(api.chain)
    app[VERIFY_BUCKETS] = Buckets(RateLimit(per_minute=6, burst=5), clock)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    session = aiohttp.ClientSession()
    try:
        yield Api(api.chain, server, session), clock
    finally:
        await session.close()
        await server.close()


async def test_brute_forcing_the_check_code_is_stopped_by_the_rate_limit(
    api: Api, device: DeviceSim, limited: tuple[Api, ManualClock]
) -> None:
    doc = (await committed(api, device))[0]
    slow, clock = limited
    right = str(doc.check_code)[-6:]
    date = doc.payload["issued_at"][:10]
    wrong = [f"{(int(right) + n) % 10**6:06d}" for n in range(1, 40)]
    answers: list[tuple[int, Any, Any]] = []
    for guess in [*wrong, right]:
        question = {"code": doc.code, "number": doc.number, "date": date, "check_code": guess}
        async with slow.session.post(slow.url("/v1/verify"), json=question) as resp:
            answers.append((resp.status, await resp.json(), resp.headers.get("Retry-After")))
    assert [a[0] for a in answers[:5]] == [200] * 5
    assert all(a[1]["result"] == "mismatch" for a in answers[:5])
    for status, body, retry in answers[5:]:  # the right guess among them: refused too
        assert (status, body["error"]["code"]) == (429, "rate_limited"), body
        assert retry is not None and int(retry) == body["error"]["retry_after"] == 10
    # the page shares the limit
    params = {"c": doc.code, "n": doc.number, "d": date, "k": right}
    async with slow.session.get(slow.url("/verify"), params=params) as resp:
        assert resp.status == 429 and 'data-code="rate_limited"' in await resp.text()
        assert resp.headers["Retry-After"] == "10"
    clock.advance(10)  # one question a 10 s
    question = {"code": doc.code, "number": doc.number, "date": date, "check_code": right}
    status, body = await slow.call("POST", "/v1/verify", json=question)
    assert (status, body["result"]) == (200, "authentic")
    status, body = await slow.call("GET", "/v1/verify", params=params)  # a hit costs nothing
    assert (status, body["result"]) == (200, "authentic")
    guess = {**question, "check_code": wrong[0]}
    status, body = await slow.call("POST", "/v1/verify", json=guess)  # a miss spends it
    assert (status, body["result"]) == (200, "mismatch")
    status, body = await slow.call("GET", "/v1/verify", params=params)
    assert status == 429


async def test_a_holder_of_the_receipt_is_never_limited(
    api: Api, device: DeviceSim, limited: tuple[Api, ManualClock]
) -> None:
    """A till or syncd checking receipts it printed asks as often as it sells."""
    slow, _ = limited
    for doc in await committed(api, device, 3):
        question = {
            "code": doc.code,
            "number": doc.number,
            "date": doc.payload["issued_at"][:10],
            "check_code": str(doc.check_code)[-6:],
        }
        for _ in range(10):  # twice the burst each
            status, body = await slow.call("POST", "/v1/verify", json=question)
            assert (status, body["result"]) == (200, "authentic"), body


def test_buckets_are_per_client_and_bounded() -> None:
    clock = ManualClock()
    buckets = Buckets(RateLimit(per_minute=60, burst=2, max_clients=100), clock)
    for _ in range(2):
        buckets.take("a")
    with pytest.raises(ChainError) as refused:
        buckets.take("a")
    assert refused.value.code == Code.RATE_LIMITED and refused.value.extra["retry_after"] == 1
    buckets.take("b")  # another client is not affected
    for n in range(1000):  # many clients: memory stays bounded
        buckets.take(f"client-{n}")
    assert len(buckets._tokens) <= 100
    with pytest.raises(ChainError):  # a spent client is kept (its bucket is the emptiest)
        buckets.take("a")
    clock.advance(1)
    buckets.take("a")


async def test_the_enrolment_answer_carries_the_sellers_taxpayer_token(
    api: Api, device: DeviceSim
) -> None:
    """The bureau's enrolment gives the taxpayer its read credential (shown once, kept as a
    hash); it reads that taxpayer's ledger and no other's."""
    doc = (await committed(api, device))[0]
    seller_tax_id = doc.payload["seller"]["tax_id"]
    documents = f"/v1/devices/{device.device_id}/documents"
    tokens = {}
    for tax_id in (seller_tax_id, OTHER_TAX_ID):
        status, body = await api.call(
            "POST", "/admin/enrolments", json={"tax_id": tax_id, "name": "Shop"}, headers=api.audit
        )
        assert status == 201, body
        tokens[tax_id] = body["taxpayer_token"]
    status, body = await api.call("GET", documents, headers=bearer(tokens[seller_tax_id]))
    assert status == 200, body
    status, body = await api.call("GET", documents, headers=bearer(tokens[OTHER_TAX_ID]))
    assert (status, body["error"]["code"]) == (403, "forbidden")
    ledger_files = b"".join(p.read_bytes() for p in api.chain.ledger.path.parent.glob("*"))
    assert tokens[seller_tax_id].encode() not in ledger_files


def test_a_total_in_other_scripts_digits_is_refused() -> None:
    # int() reads "١٦٩٥" as 1695: refused like any total that is not ASCII digits
    fields = {"code": "991295698646", "number": "00000001", "date": "2026-11-25"}
    assert query_from({**fields, "total": "-1695"}).total == -1695
    with pytest.raises(ChainError, match="whole number of fen") as refused:
        query_from({**fields, "total": "\u0661\u0666\u0669\u0665"})
    assert refused.value.code == Code.BAD_REQUEST
