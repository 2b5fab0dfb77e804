"""docs/chain-openapi.yaml is a valid OpenAPI document, names exactly the routes the
server has, describes what the server answers (statuses, error codes, JSON and CBOR
bodies, no undocumented fields), and a property-based fuzz of the public API finds no
5xx and only documented answers."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import cbor2
import pytest
import requests
import schemathesis
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, settings
from openapi_schema_validator import OAS30Validator, oas30_format_checker
from openapi_spec_validator import validate
from schemathesis import DataGenerationMethod
from schemathesis.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from device.protocol.document import parse_document
from hostsim.bureau import buyer_key_hash
from hostsim.chain import wire
from hostsim.chain.api import build_app
from hostsim.chain.errors import STATUS, Code
from hostsim.chain.faults import Faults, Listener, admin_app
from hostsim.chain.node import Chain
from hostsim.chain.ratelimit import RateLimit
from tests import openapi
from tests.hostsim.chain.conftest import BUYER_TAX_ID, Api, DeviceSim, b64, resign

SPEC, DOC = openapi.load("chain-openapi.yaml")
CBOR = wire.CBOR
JSON_TYPE = {"Content-Type": "application/json"}
OTHER_TAX_ID = "91110108MA01ABCD2H"


# --- the document as data ------------------------------------------------------------------


def resolve(node: Any) -> Any:
    return openapi.resolve(DOC, node)


OPERATIONS = openapi.operations(DOC)
merged, strict = openapi.merged, openapi.strict


def json_shape(value: Any, schema: dict[str, Any]) -> Any:
    """A CBOR answer in its JSON form: bytes become base64 where the schema says `byte`,
    hex elsewhere (exactly what the server does for JSON)."""
    if "allOf" in schema:
        schema = merged(schema["allOf"])
    if isinstance(value, bytes):
        return base64.b64encode(value).decode() if schema.get("format") == "byte" else value.hex()
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return {
            k: json_shape(v, props.get(k, extra if isinstance(extra, dict) else {}))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [json_shape(v, schema.get("items", {})) for v in value]
    return value


class Conformance:
    """Checks answers against the document and remembers which (operation, status) it saw."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, str, int]] = set()

    def check(self, method: str, path: str, status: int, content_type: str, body: bytes) -> Any:
        op = OPERATIONS[(method, path)]
        assert str(status) in op["responses"], f"{method} {path} answered an undocumented {status}"
        documented = op["responses"][str(status)]
        assert content_type in documented.get("content", {}), (method, path, status, content_type)
        schema = documented["content"][content_type]["schema"]
        if content_type == "text/html":
            # the 查验 page for people: a page, not data; a refusal names its code in
            # data-code, as a JSON refusal does in its body
            page = body.decode("utf-8")
            if status >= 400:
                code = re.search(r'data-code="([a-z_]+)"', page)
                assert code and code[1] in documented["x-error-codes"], (method, path, status)
            self.seen.add((method, path, status))
            return page
        value = cbor2.loads(body) if content_type == CBOR else json.loads(body)
        shaped = json_shape(value, schema) if content_type == CBOR else value
        OAS30Validator(strict(schema), format_checker=oas30_format_checker).validate(shaped)
        if status >= 400:
            code = value["error"]["code"]
            assert code in documented["x-error-codes"], (method, path, status, value)
        self.seen.add((method, path, status))
        return shaped


# --- the document itself -------------------------------------------------------------------


def test_document_is_valid_openapi() -> None:
    validate(DOC)


def fault_admin(path: str) -> bool:
    """A route of the fault-injection admin API (its own address); the bureau's
    `/admin/enrolments` is on the chain API."""
    return path.startswith("/admin/") and path != "/admin/enrolments"


def served(app: web.Application) -> set[tuple[str, str]]:
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }


async def test_document_names_exactly_the_routes(chain: Chain) -> None:
    public = {(m, p) for m, p in OPERATIONS if not fault_admin(p)}
    admin = {(m, p) for m, p in OPERATIONS if fault_admin(p)}
    assert served(build_app(chain)) == public
    listener = Listener(web.AppRunner(web.Application()), "127.0.0.1", 0)
    assert served(admin_app(chain, Faults(), listener)) == admin
    assert all(OPERATIONS[op]["tags"] == ["admin"] for op in admin)
    assert all("admin" not in OPERATIONS[op]["tags"] for op in public)
    assert all("servers" in DOC["paths"][path] for _, path in admin)


def test_error_codes_and_limits_match_the_code() -> None:
    enum = DOC["components"]["schemas"]["ErrorCode"]["enum"]
    assert sorted(enum) == sorted(c.value for c in Code)
    for method, path, status, codes in openapi.error_codes(OPERATIONS):
        for code in codes:
            assert STATUS.get(Code(code), 400) == status, (method, path, status, code)
    body = OPERATIONS[("POST", "/v1/documents")]["requestBody"]["content"]
    assert body["application/json"]["schema"]["properties"]["documents"]["maxItems"] == (
        wire.MAX_BATCH
    )
    assert body[CBOR]["schema"]["properties"]["documents"]["maxItems"] == wire.MAX_BATCH
    wait = DOC["components"]["parameters"]["Wait"]["schema"]
    assert (wait["minimum"], wait["maximum"]) == (0, wire.MAX_WAIT)


# --- what the server answers ---------------------------------------------------------------


class Tour:
    """Requests to the chain API, each answer checked against the document."""

    def __init__(self, api: Api, conformance: Conformance) -> None:
        self.api, self.conformance = api, conformance

    async def __call__(
        self,
        method: str,
        template: str,
        status: int,
        *,
        cbor: bool = False,
        send_cbor: Any = None,
        args: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """One request; asserts `status`, returns the answer in JSON form. With `cbor` the
        answer is asked for in CBOR, and for a GET the JSON answer must be the same."""
        path = template.format(**(args or {}))
        headers = dict(kwargs.pop("headers", {}))
        if cbor:
            headers["Accept"] = CBOR
        if send_cbor is not None:
            kwargs["data"] = cbor2.dumps(send_cbor)
            headers["Content-Type"] = CBOR
        async with self.api.session.request(
            method, self.api.url(path), headers=headers, **kwargs
        ) as resp:
            body = await resp.read()
            assert resp.status == status, (method, path, resp.status, body[:300])
            answer = self.conformance.check(method, template, status, resp.content_type, body)
        if cbor and method == "GET" and status < 400:
            json_headers = headers | {"Accept": "application/json"}
            again = await self(method, template, status, args=args, headers=json_headers, **kwargs)
            assert answer == again, (path, answer, again)
        return answer

    async def error(self, method: str, template: str, status: int, code: str, **kw: Any) -> Any:
        answer = await self(method, template, status, **kw)
        assert answer["error"]["code"] == code, answer
        return answer


async def test_every_answer_is_documented(api: Api, device_factory: Any) -> None:
    """A tour of every public operation, successes and refusals, in JSON and in CBOR."""
    seen = Conformance()
    call = Tour(api, seen)
    admin = {"Authorization": f"Bearer {api.chain.bureau.admin_token}"}
    sim, other, stranger = device_factory(), device_factory(), device_factory()
    nobody = {"device_id": "TC" + "0" * 12}
    api.chain.ledger.add_taxpayer_token(OTHER_TAX_ID, buyer_key_hash("other-seller-token"))
    other_seller = {"Authorization": "Bearer other-seller-token"}
    unknown = {"Authorization": "Bearer not-a-credential"}
    no_invoice = {"code": "0" * 12, "number": "0" * 8}

    async def refusals(method: str, template: str, table: list[tuple[Any, ...]]) -> None:
        """(status, code, keyword arguments of the request) for each refusal."""
        for status, code, kwargs in table:
            await call.error(method, template, status, code, **kwargs)

    await call("GET", "/v1/health", 200, cbor=True)
    await call("GET", "/v1/consortium", 200, cbor=True)
    await call.error("GET", "/v1/blocks/{height}", 404, "not_found", args={"height": "latest"})

    # registration
    reg = {"certificate": b64(sim.certificate), "segments": [b64(s) for s in sim.segments]}
    await call("POST", "/v1/devices", 201, json=reg)
    raw_reg = {"certificate": sim.certificate, "segments": sim.segments}
    await call("POST", "/v1/devices", 201, send_cbor=raw_reg, cbor=True)
    await call("POST", "/v1/devices", 201, json={"certificate": b64(other.certificate)})
    strange_segment = {"certificate": b64(stranger.certificate), "segments": ["AAAA"]}
    many = {"certificate": b64(sim.certificate), "segments": ["AAAA"] * 101}
    await refusals(
        "POST",
        "/v1/devices",
        [
            (400, "bad_request", {"json": {}}),
            (400, "bad_request", {"json": {"csr": "AA==", "certificate": "AA=="}}),
            (400, "bad_request", {"json": {"certificate": "not base64!"}}),
            (400, "bad_certificate", {"json": {"certificate": b64(b"\xa0")}}),
            (400, "bad_csr", {"json": {"csr": b64(b"\xa0")}}),
            (400, "bad_segment", {"json": strange_segment}),
            (413, "batch_too_large", {"json": many}),
            (415, "unsupported_media_type", {"data": b"x"}),
        ],
    )

    # documents: committed, duplicate, held, pending, rejected
    docs = sim.issue(3, buyer_tax_id=BUYER_TAX_ID)
    answer = await call("POST", "/v1/documents", 200, json={"documents": [b64(d) for d in docs]})
    assert [r["status"] for r in answer["results"]] == ["committed"] * 3
    answer = await call("POST", "/v1/documents", 200, send_cbor={"documents": docs}, cbor=True)
    assert [r["status"] for r in answer["results"]] == ["duplicate"] * 3
    for form in (
        {"json": {"documents": [b64(d) for d in docs]}},
        {"send_cbor": {"documents": docs}},
    ):
        compact = await call(
            "POST",
            "/v1/documents",
            200,
            params={"receipts": "compact"},
            cbor="send_cbor" in form,
            **form,
        )
        assert len(compact["blocks"]) == 1 and "header" not in compact["results"][0]["receipt"]
    gap, ahead = sim.issue(2)
    answer = await call("POST", "/v1/documents", 200, json={"documents": [b64(ahead)]})
    assert answer["results"][0]["status"] == "held"
    held = await call("GET", "/v1/tx/{hash}", 200, args={"hash": answer["results"][0]["hash"]})
    assert held["status"] == "held"
    await call(
        "GET",
        "/v1/devices/{device_id}",
        200,
        cbor=True,
        args={"device_id": sim.device_id},
        headers=admin,
    )
    twin = resign(sim, docs[0], buyer={"name": "Someone Else"})
    batch = [b64(gap), b64(twin), b64(stranger.issue(1)[0]), b64(b"junk")]
    answer = await call("POST", "/v1/documents", 200, json={"documents": batch}, params={"wait": 0})
    assert [(r["status"], r.get("code")) for r in answer["results"][1:]] == [
        ("rejected", "equivocation"),
        ("rejected", "unknown_device"),
        ("rejected", "malformed_document"),
    ]
    for result in answer["results"][:3]:
        await call("GET", "/v1/tx/{hash}", 200, cbor=True, args={"hash": result["hash"]})
    huge = b"[" + b"0," * (wire.MAX_BODY // 2) + b"0]"
    await refusals(
        "POST",
        "/v1/documents",
        [
            (400, "bad_request", {"json": {"documents": []}}),
            (400, "bad_request", {"json": {"documents": "AAAA"}}),
            (400, "bad_request", {"json": {"documents": ["not base64!"]}}),
            (400, "bad_request", {"json": [1, 2]}),
            (400, "bad_request", {"json": {"documents": ["AA=="]}, "params": {"wait": 31}}),
            (400, "bad_request", {"json": {"documents": ["AA=="]}, "params": {"receipts": "x"}}),
            (400, "bad_request", {"data": b"{", "headers": JSON_TYPE}),
            (400, "bad_request", {"data": b"\xff", "headers": {"Content-Type": CBOR}}),
            (413, "batch_too_large", {"json": {"documents": ["AA=="] * (wire.MAX_BATCH + 1)}}),
            (413, "body_too_large", {"data": huge, "headers": JSON_TYPE}),
            (415, "unsupported_media_type", {"data": b"x"}),
        ],
    )

    # blocks, transactions, devices and their documents
    block = await call("GET", "/v1/blocks/{height}", 200, cbor=True, args={"height": "1"})
    await call("GET", "/v1/blocks/{height}", 200, cbor=True, args={"height": "latest"})
    await refusals(
        "GET",
        "/v1/blocks/{height}",
        [
            (400, "bad_request", {"args": {"height": "-1"}}),
            (404, "not_found", {"args": {"height": "999999"}}),
        ],
    )
    for tx_hash in (block["transactions"][0]["hash"], parse_document(docs[0]).hash.hex()):
        await call("GET", "/v1/tx/{hash}", 200, cbor=True, args={"hash": tx_hash})
    await refusals(
        "GET",
        "/v1/tx/{hash}",
        [
            (400, "bad_request", {"args": {"hash": "ABC"}}),
            (404, "not_found", {"args": {"hash": "0" * 64}}),
        ],
    )
    dev = {"device_id": sim.device_id}
    device = await call("GET", "/v1/devices/{device_id}", 200, cbor=True, args=dev, headers=admin)
    assert [e["rule"] for e in device["equivocations"]] == ["counter"]
    page = await call(
        "GET",
        "/v1/devices/{device_id}/documents",
        200,
        cbor=True,
        args=dev,
        params={"after": 1, "limit": 2},
        headers=admin,
    )
    assert [d["counter"] for d in page["documents"]] == [2, 3]
    for template in ("/v1/devices/{device_id}", "/v1/devices/{device_id}/documents"):
        await refusals(
            "GET",
            template,
            [
                (400, "bad_request", {"args": {"device_id": "tc1"}}),
                (401, "unauthorized", {"args": dev}),
                (401, "unauthorized", {"args": dev, "headers": unknown}),
                (403, "forbidden", {"args": dev, "headers": other_seller}),
                (404, "unknown_device", {"args": nobody, "headers": admin}),
            ],
        )
    await call.error(
        "GET",
        "/v1/devices/{device_id}/documents",
        400,
        "bad_request",
        args=dev,
        params={"limit": 0},
        headers=admin,
    )

    # invoices, credit notes and 查验
    first, second = parse_document(docs[0]), parse_document(docs[1])
    inv = {"code": str(first.code), "number": str(first.number)}
    note = parse_document(sim.credit(inv["code"], inv["number"]))
    await call("POST", "/v1/documents", 200, json={"documents": [b64(note.raw)]})
    answer = await call(
        "GET", "/v1/invoices/{code}/{number}", 200, cbor=True, args=inv, headers=admin
    )
    assert answer["state"] == "credited" and answer["history"][-1]["event"] == "credited"
    note_id = {"code": str(note.code), "number": str(note.number)}
    answer = await call(
        "GET", "/v1/invoices/{code}/{number}", 200, cbor=True, args=note_id, headers=admin
    )
    assert answer["state"] == "credit"
    await refusals(
        "GET",
        "/v1/invoices/{code}/{number}",
        [
            (400, "bad_request", {"args": {"code": "1", "number": "2"}}),
            (401, "unauthorized", {"args": inv}),
            (403, "forbidden", {"args": inv, "headers": other_seller}),
            (404, "not_found", {"args": no_invoice, "headers": admin}),
        ],
    )
    date = second.payload["issued_at"][:10]
    ask = {"code": second.code, "number": second.number, "date": date}
    answer = await call("POST", "/v1/verify", 200, json=ask | {"check_code": second.check_code})
    assert answer["result"] == "authentic"
    answer = await call("POST", "/v1/verify", 200, send_cbor=ask | {"total": 1}, cbor=True)
    assert answer["mismatched"] == ["total"]
    short = {"c": second.code, "n": second.number, "d": date, "t": str(second.total)}
    answer = await call("GET", "/v1/verify", 200, cbor=True, params=short)
    assert answer["result"] == "authentic"
    answer = await call("GET", "/v1/verify", 200, params=short | {"n": "99999999"})
    assert answer["result"] == "not_found"
    await call.error("GET", "/v1/verify", 400, "bad_request", params={"q": "nonsense"})
    await refusals(
        "POST",
        "/v1/verify",
        [
            (400, "bad_request", {"json": {"code": "12"}}),
            (415, "unsupported_media_type", {"data": b"x"}),
        ],
    )
    assert 'id="result"' not in await call("GET", "/verify", 200)
    assert 'data-result="authentic"' in await call("GET", "/verify", 200, params=short)
    assert 'data-result="error"' in await call("GET", "/verify", 400, params={"q": "nonsense"})

    # buyers and claims
    buyer = {"tax_id": BUYER_TAX_ID, "name": "Buyer Co"}
    await refusals(
        "POST",
        "/v1/buyers",
        [
            (401, "unauthorized", {"json": buyer}),
            (
                400,
                "bad_request",
                {"json": buyer | {"tax_id": "91440300MA5G12345X"}, "headers": admin},
            ),
            (400, "bad_request", {"json": buyer | {"name": " "}, "headers": admin}),
            (415, "unsupported_media_type", {"data": b"x", "headers": admin}),
        ],
    )
    key = (await call("POST", "/v1/buyers", 201, json=buyer, headers=admin))["api_key"]
    enrolments = "/admin/enrolments"
    taxpayer = {"tax_id": BUYER_TAX_ID, "name": "Shop"}
    await call("POST", enrolments, 201, json=taxpayer | {"devices": 2}, headers=admin)
    await call("POST", enrolments, 201, send_cbor=taxpayer, cbor=True, headers=admin)
    await refusals(
        "POST",
        enrolments,
        [
            (401, "unauthorized", {"json": taxpayer}),
            (400, "bad_request", {"json": taxpayer | {"devices": 0}, "headers": admin}),
            (400, "bad_request", {"json": taxpayer | {"expires_in": 59}, "headers": admin}),
            (400, "bad_request", {"json": taxpayer | {"extra": 1}, "headers": admin}),
            (415, "unsupported_media_type", {"data": b"x", "headers": admin}),
        ],
    )
    await call("POST", "/v1/buyers", 201, send_cbor=buyer, cbor=True, headers=admin)
    as_buyer = {"Authorization": f"Bearer {key}"}
    plain = parse_document(gap)  # issued to no buyer
    claim = "/v1/invoices/{code}/{number}/claim"
    await refusals(
        "POST",
        claim,
        [
            (401, "unauthorized", {"args": inv}),
            (401, "unauthorized", {"args": inv, "headers": admin}),
            (400, "bad_request", {"args": {"code": "x", "number": "y"}, "headers": as_buyer}),
            (404, "not_found", {"args": no_invoice, "headers": as_buyer}),
            (409, "not_claimable", {"args": inv, "headers": as_buyer}),  # credited in full
            (409, "not_claimable", {"args": note_id, "headers": as_buyer}),  # a credit note
            (
                403,
                "not_the_buyer",
                {"args": {"code": plain.code, "number": plain.number}, "headers": as_buyer},
            ),
        ],
    )
    mine = {"code": str(second.code), "number": str(second.number)}
    await call("POST", claim, 201, args=mine, headers=as_buyer, cbor=True)
    again = await call.error("POST", claim, 409, "already_claimed", args=mine, headers=as_buyer)
    assert isinstance(again["error"]["claimed_by"], str)
    confirm = "/v1/invoices/{code}/{number}/credit-confirmations"
    await call("POST", confirm, 201, args=mine, json={"amount": 1}, headers=as_buyer)
    await call(
        "POST", confirm, 201, args=mine, send_cbor={"amount": 1}, cbor=True, headers=as_buyer
    )
    await refusals(
        "POST",
        confirm,
        [
            (401, "unauthorized", {"args": mine, "json": {"amount": 1}}),
            (400, "bad_request", {"args": mine, "json": {"amount": 0}, "headers": as_buyer}),
            (
                400,
                "credit_exceeds_original",
                {"args": mine, "json": {"amount": 10**12}, "headers": as_buyer},
            ),
            (404, "not_found", {"args": no_invoice, "json": {"amount": 1}, "headers": as_buyer}),
            (409, "not_claimed", {"args": note_id, "json": {"amount": 1}, "headers": as_buyer}),
            (415, "unsupported_media_type", {"args": mine, "data": b"x", "headers": as_buyer}),
        ],
    )

    # segments and revocation
    segments = "/v1/devices/{device_id}/segments"
    big = sim.signed_request(100_001)
    stale = sim.signed_request(1, at=time.time() - 2 * 86_400)
    foreign = stranger.signed_request(1, device_id=sim.device_id)
    await call("POST", segments, 201, args=dev, json={"count": 10}, cbor=True)
    await call("POST", segments, 201, args=dev, json={"segment": b64(sim.segments[0])})
    signed = sim.segment_request(10)
    await call("POST", segments, 201, args=dev, json={"request": b64(signed)})
    await call("POST", segments, 201, args=dev, send_cbor={"request": sim.segment_request(5)})
    await refusals(
        "POST",
        segments,
        [
            (400, "bad_request", {"args": dev, "json": {}}),
            (400, "bad_request", {"args": dev, "json": {"count": 0}}),
            (400, "bad_request", {"args": dev, "json": {"count": True}}),
            (400, "bad_request", {"args": {"device_id": "x"}, "json": {"count": 1}}),
            (400, "bad_segment", {"args": dev, "json": {"segment": b64(b"\xa0")}}),
            (400, "bad_segment", {"args": dev, "json": {"segment": b64(stranger.segments[0])}}),
            (400, "bad_request", {"args": dev, "json": {"request": b64(b"\xa0")}}),
            (400, "segment_too_large", {"args": dev, "json": {"request": b64(big)}}),
            (400, "request_stale", {"args": dev, "json": {"request": b64(stale)}}),
            (403, "bad_signature", {"args": dev, "json": {"request": b64(foreign)}}),
            (409, "request_replayed", {"args": dev, "json": {"request": b64(signed)}}),
            (404, "unknown_device", {"args": nobody, "json": {"count": 1}}),
            (415, "unsupported_media_type", {"args": dev, "data": b"x"}),
        ],
    )
    revoke = "/v1/devices/{device_id}/revoke"
    gone = {"device_id": other.device_id}
    why = {"reason": "stolen"}
    await refusals(
        "POST",
        revoke,
        [
            (401, "unauthorized", {"args": gone, "json": why}),
            (401, "unauthorized", {"args": gone, "json": why, "headers": as_buyer}),
            (400, "bad_request", {"args": gone, "json": {"reason": " "}, "headers": admin}),
            (400, "bad_request", {"args": {"device_id": "x"}, "json": why, "headers": admin}),
            (404, "unknown_device", {"args": nobody, "json": why, "headers": admin}),
            (415, "unsupported_media_type", {"args": gone, "data": b"x", "headers": admin}),
        ],
    )
    once = await call("POST", revoke, 200, args=gone, json=why, headers=admin)
    twice = await call("POST", revoke, 200, args=gone, send_cbor=why, cbor=True, headers=admin)
    assert once == twice
    await call.error("POST", segments, 403, "device_revoked", args=gone, json={"count": 1})
    answer = await call("GET", "/v1/devices/{device_id}", 200, cbor=True, args=gone, headers=admin)
    assert answer["revoked"] and answer["revoked_reason"] == "stolen"

    rotate = "/v1/consortium/rotate"
    await call.error("POST", rotate, 401, "unauthorized", headers=as_buyer)
    assert (await call("POST", rotate, 201, headers=admin))["epoch"] == 2
    rotated = await call("GET", "/v1/consortium", 200, cbor=True)
    assert rotated["epoch"] == 2 and len(rotated["endorsements"]) == len(rotated["nodes"])

    # every documented success answer was seen
    successes = {
        (m, p, int(s))
        for (m, p), op in OPERATIONS.items()
        for s in op["responses"]
        if int(s) < 300 and not fault_admin(p)
    }
    assert successes <= seen.seen, successes - seen.seen


async def test_unknown_paths_and_methods_answer_errors(api: Api) -> None:
    for method, path, status, code in [
        ("GET", "/v1/nothing", 404, "not_found"),
        ("DELETE", "/v1/health", 405, "method_not_allowed"),
        ("PUT", "/v1/documents", 405, "method_not_allowed"),
    ]:
        async with api.session.request(method, api.url(path)) as resp:
            assert (resp.status, resp.content_type) == (status, "application/json")
            assert (await resp.json())["error"]["code"] == code


async def test_admin_answers_are_documented(chain: Chain) -> None:
    seen = Conformance()
    listener = Listener(web.AppRunner(web.Application()), "127.0.0.1", 0)
    server = TestServer(admin_app(chain, Faults(), listener), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:

            async def call(method: str, path: str, status: int, **kwargs: Any) -> Any:
                async with session.request(method, server.make_url(path), **kwargs) as resp:
                    body = await resp.read()
                    assert resp.status == status, (method, path, body)
                    return seen.check(method, path, status, resp.content_type, body)

            await call("GET", "/admin/faults", 200)
            set_to = {"mode": "latency", "latency_ms": 1, "count": 2}
            assert (await call("POST", "/admin/faults", 200, json=set_to))["count"] == 2
            await call("POST", "/admin/faults", 400, json={"mode": "explode"})
            await call("POST", "/admin/faults", 400, json={"mode": "latency", "count": 0})
            await call("POST", "/admin/faults", 415, data=b"x")
            await call("POST", "/admin/faults", 413, data=b"0" * (2 << 20), headers=JSON_TYPE)
            assert (await call("DELETE", "/admin/faults", 200))["mode"] == "none"
            answer = await call("POST", "/admin/partition", 200, json={"nodes": ["enterprise1"]})
            assert answer["partitioned"] == ["enterprise1"]
            assert (await call("GET", "/admin/faults", 200))["partitioned"] == ["enterprise1"]
            await call("POST", "/admin/partition", 404, json={"nodes": ["nobody"]})
            await call("POST", "/admin/partition", 400, json={"nodes": "enterprise1"})
            await call("POST", "/admin/partition", 415, data=b"x")
            await call("POST", "/admin/partition", 413, data=b"0" * (2 << 20), headers=JSON_TYPE)
            assert (await call("POST", "/admin/heal", 200))["partitioned"] == []
    finally:
        await server.close()
    documented = {(m, p, int(s)) for (m, p), op in OPERATIONS.items() for s in op["responses"]}
    assert {x for x in documented if fault_admin(x[1])} == seen.seen


async def test_verify_with_non_ascii_digits_is_refused_not_crashed(
    api: Api, device: DeviceSim
) -> None:
    await api.register(device)
    [raw] = device.issue(1)
    await api.submit([raw])
    doc = parse_document(raw)
    ask = {
        "code": doc.code,
        "number": doc.number,
        "date": doc.payload["issued_at"][:10],
        "check_code": "\u0660" * 6,  # ARABIC-INDIC DIGIT ZERO, six times
    }
    async with api.session.post(api.url("/v1/verify"), json=ask) as resp:
        assert resp.status == 400, await resp.text()
        assert (await resp.json())["error"]["code"] == "bad_request"
    for field in ("code", "number"):
        other = {**ask, "check_code": doc.check_code, field: "\u0660" * len(ask[field])}
        async with api.session.post(api.url("/v1/verify"), json=other) as resp:
            assert resp.status == 400, await resp.text()


# --- the fuzz ------------------------------------------------------------------------------


@schemathesis.serializer(CBOR)
class CborSerializer:
    """Generated bodies for `application/cbor`: `format: binary` strings as byte strings."""

    @staticmethod
    def _plain(value: Any) -> Any:
        if isinstance(value, schemathesis.serializers.Binary):
            return value.data
        if isinstance(value, dict):
            return {k: CborSerializer._plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [CborSerializer._plain(v) for v in value]
        return value

    def as_requests(self, context: Any, value: Any) -> dict[str, Any]:
        return {"data": cbor2.dumps(self._plain(value)), "headers": {"Content-Type": CBOR}}

    def as_werkzeug(self, context: Any, value: Any) -> dict[str, Any]:
        return self.as_requests(context, value)


schema = schemathesis.from_path(
    str(SPEC),
    data_generation_methods=[DataGenerationMethod.positive, DataGenerationMethod.negative],
)


@pytest.fixture(scope="module")
def live_chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The chain's API in a thread of its own, on a loopback port, with a registered device,
    a few invoices and a buyer, so the fuzz can reach real records as well as missing ones."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    state: dict[str, Any] = {}

    async def start() -> None:
        chain = Chain.open(
            tmp_path_factory.mktemp("fuzz") / "chain", training=True, block_interval=0.005
        )
        chain.engine.start()
        # a limit the fuzz does not reach, so it explores 查验's answers (the limit has its
        # own tests, tests/hostsim/chain/test_read_roles.py)
        runner = web.AppRunner(build_app(chain, verify_limit=RateLimit(10**6, 10**6)))
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

    async def stop() -> None:
        await state["runner"].cleanup()
        await state["chain"].engine.stop()
        state["chain"].close()

    try:
        known = seed(state["url"], state["chain"], tmp_path_factory.mktemp("fuzz-device"))
        yield {"url": state["url"], "known": known}
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def seed(url: str, chain: Chain, directory: Path) -> dict[str, str]:
    """A registered device with three committed invoices and an enrolled buyer: the real
    identifiers and credentials the fuzz may use."""
    sim = DeviceSim(directory)
    try:
        reg = {"certificate": b64(sim.certificate), "segments": [b64(s) for s in sim.segments]}
        assert requests.post(f"{url}/v1/devices", json=reg, timeout=30).status_code == 201
        docs = sim.issue(3, buyer_tax_id=BUYER_TAX_ID)
        answer = requests.post(
            f"{url}/v1/documents", json={"documents": [b64(d) for d in docs]}, timeout=30
        ).json()
        assert {r["status"] for r in answer["results"]} == {"committed"}, answer
    finally:
        sim.close()
    admin = f"Bearer {chain.bureau.admin_token}"
    seller = parse_document(docs[0]).payload["seller"]["tax_id"]
    chain.ledger.add_taxpayer_token(seller, buyer_key_hash("fuzz-seller-token"))
    buyer = requests.post(
        f"{url}/v1/buyers",
        json={"tax_id": BUYER_TAX_ID, "name": "Buyer Co"},
        headers={"Authorization": admin},
        timeout=30,
    ).json()
    first = parse_document(docs[0])
    return {
        "device_id": sim.device_id,
        "code": str(first.code),
        "number": str(first.number),
        "date": first.payload["issued_at"][:10],
        "hash": first.hash.hex(),
        "height": str(answer["height"]),
        "bureauAdmin": admin,
        "buyerKey": f"Bearer {buyer['api_key']}",
        "taxpayerToken": "Bearer fuzz-seller-token",
    }


def aim_at_known_records(case: Any, known: dict[str, str]) -> None:
    """For about half of the cases, put real identifiers and credentials in place of the
    generated ones (everything else stays as generated), so the fuzz gets past the lookups."""
    if zlib.crc32(repr((case.path_parameters, case.query, case.body)).encode()) % 2:
        return
    for name in ("device_id", "code", "number", "hash", "height"):
        if name in (case.path_parameters or {}):
            case.path_parameters[name] = known[name]
    if case.path in ("/v1/verify", "/verify"):
        fields = {"code": known["code"], "number": known["number"], "date": known["date"]}
        if case.method == "GET" and isinstance(case.query, dict):
            case.query.update(c=fields["code"], n=fields["number"], d=fields["date"])
        elif isinstance(case.body, dict):
            case.body.update(fields)
    for requirement in case.operation.definition.raw.get("security", [])[:1]:
        for scheme in requirement:
            case.headers = {**(case.headers or {}), "Authorization": known[scheme]}


def forbidden_header_bytes(headers: Any) -> bool:
    """Whether a header value holds a control character, which RFC 9110 forbids."""
    values = [v.decode("latin-1") if isinstance(v, bytes) else str(v) for v in headers.values()]
    return any((ord(c) < 32 and c != "\t") or ord(c) == 127 for v in values for c in v)


def not_a_server_fault(response: requests.Response, case: Any) -> None:
    """No 5xx, except the documented 503 `unavailable` of an act not final within `wait`
    (the fuzz asks for `wait=0` too): that one is the API working as documented."""
    if response.status_code < 500:
        return
    documented = case.operation.definition.raw["responses"]
    assert response.status_code == 503 and "503" in documented, response.text[:300]
    assert response.json()["error"]["code"] == "unavailable", response.text


def error_body(response: requests.Response, case: Any) -> None:
    """Every refusal is JSON {"error": {"code", "message"}} with a known code and its status."""
    if response.status_code < 400:
        return
    if case.path == "/verify":
        # the 查验 page answers bad input with the form and the reason, in HTML
        assert response.status_code in (400, 429), response.text[:300]
        assert response.headers["Content-Type"].startswith("text/html"), response.headers
        code = "bad_request" if response.status_code == 400 else "rate_limited"
        assert f'data-code="{code}"' in response.text, response.text[:300]
        return
    if not response.headers.get("Content-Type", "").startswith("application/json"):
        # only aiohttp's HTTP parser answers otherwise (400, text/plain), before any route
        # runs: for a negative case that puts control characters in a header value
        assert response.status_code == 400, response.text
        assert forbidden_header_bytes(response.request.headers), response.text
        return
    error = response.json()["error"]
    assert isinstance(error["code"], str) and isinstance(error["message"], str), error
    assert STATUS.get(Code(error["code"]), 400) == response.status_code, error


def listed_error_code(response: requests.Response, case: Any) -> None:
    """The refusal's code is one the document lists for this operation and status."""
    if response.status_code < 400 or case.path == "/verify":  # HTML: see error_body
        return
    documented = resolve(case.operation.definition.raw["responses"][str(response.status_code)])
    assert response.json()["error"]["code"] in documented["x-error-codes"], response.text


@schema.exclude(tag="admin").parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzz_public_api(case: Any, live_chain: dict[str, Any]) -> None:
    """No 5xx (but the documented 503 for an act not final within `wait`); every refusal a
    JSON error; and for inputs the document allows, only the statuses, content types,
    bodies and error codes it documents."""
    aim_at_known_records(case, live_chain["known"])
    response = case.call(base_url=live_chain["url"], timeout=60)
    checks: tuple[Any, ...] = (not_a_server_fault, error_body)
    # a header value with control characters never reaches the app (see error_body)
    reached_the_app = not forbidden_header_bytes(response.request.headers)
    if case.data_generation_method == DataGenerationMethod.positive and reached_the_app:
        checks += (
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
            listed_error_code,
        )
    case.validate_response(response, checks=checks)
