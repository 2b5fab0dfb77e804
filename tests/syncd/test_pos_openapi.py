"""docs/pos-openapi.yaml is a valid OpenAPI 3.1 document, names exactly the routes syncd's
POS API serves, and its error codes are syncd/refusals.py's. (That every answer the syncd
tests get conforms is checked for each test by tests/syncd/conftest.py; the fuzz of a real
syncd is tests/syncd/test_pos_fuzz.py.)"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any, cast

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate

from syncd import refusals
from syncd.api import ApiContext, PosApi
from syncd.idempotency import IdempotencyStore
from syncd.metrics import CONTENT_TYPE, SyncdMetrics
from tests import openapi
from tests.syncd.pos_contract import DOC, OPERATIONS, Answer, problem


def test_document_is_valid_openapi_3_1() -> None:
    assert DOC["openapi"].startswith("3.1.")
    validate(cast("Mapping[Hashable, Any]", DOC))


def served(app: web.Application) -> set[tuple[str, str]]:
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }


def test_document_names_exactly_the_routes(tmp_path: Path) -> None:
    store = IdempotencyStore(tmp_path)
    try:
        ctx = ApiContext(devices=[], store=store, metrics=SyncdMetrics(), status=dict)
        assert served(PosApi(ctx).app()) == set(OPERATIONS)
    finally:
        store.close()


def test_error_codes_are_the_refusals() -> None:
    enum = DOC["components"]["schemas"]["ErrorCode"]["enum"]
    assert enum == list(refusals.ERROR_CODES)
    # each response's x-error-codes come with its status, and together they list every
    # code of that status (405 is for every path, so in the description, not an operation)
    listed: dict[int, set[str]] = defaultdict(set)
    for method, path, status, codes in openapi.error_codes(OPERATIONS):
        for code in codes:
            assert status in refusals.http_statuses(code), (method, path, status, code)
        listed[status].update(codes)
    by_status: dict[int, set[str]] = defaultdict(set)
    for code in refusals.ERROR_CODES:
        for status in refusals.http_statuses(code):
            by_status[status].add(code)
    assert by_status.pop(405) == {"METHOD_NOT_ALLOWED"}
    assert dict(listed) == dict(by_status)


def test_retry_rules_are_the_refusals() -> None:
    """The description's "Retries" paragraph names exactly refusals.RETRY_SAME_KEY."""
    text = DOC["info"]["description"]
    retries = text[text.index("**Retries.**") : text.index("**Errors.**")]
    named = set(re.findall(r"`([A-Z_]+)`", retries.split("(`syncd.refusals")[0]))
    assert named == set(refusals.RETRY_SAME_KEY)
    for code in refusals.RETRY_SAME_KEY:
        assert 503 in refusals.http_statuses(code) or code in ("REQUEST_TIMEOUT", "INTERNAL_ERROR")


def test_metrics_content_type_is_documented() -> None:
    content = OPERATIONS[("GET", "/metrics")]["responses"]["200"]["content"]
    assert list(content) == [CONTENT_TYPE]


def test_the_check_catches_what_the_document_does_not_say() -> None:
    """The conformance check itself: an answer with an undocumented field, status, code or
    a missing header is reported (so a test that passes it is not a check that cannot fail)."""
    good = b'{"ok": true, "stopping": false}'
    assert problem(Answer("GET", "/v1/health", 200, "application/json", good)) is None
    extra = b'{"ok": true, "stopping": false, "secret": 1}'
    assert "secret" in str(problem(Answer("GET", "/v1/health", 200, "application/json", extra)))
    assert problem(Answer("GET", "/v1/health", 418, "application/json", good))
    wrong_code = b'{"error": "PAPER_OUT", "message": "m"}'
    assert problem(Answer("GET", "/v1/status", 401, "application/json", wrong_code))
    busy = b'{"error": "TOO_MANY_CONNECTIONS", "message": "m"}'
    assert "Retry-After" in str(problem(Answer("GET", "/v1/status", 503, "application/json", busy)))
    with_header = Answer("GET", "/v1/status", 503, "application/json", busy, {"retry-after": "1"})
    assert problem(with_header) is None
    unknown = b'{"error": "NOT_FOUND", "message": "No such document.", "detail": "no route"}'
    assert problem(Answer("GET", "/v2/x", 404, "application/json", unknown)) is None
    assert problem(Answer("POST", "/v1/invoices", 201, "application/json", b"{}"))


async def test_no_route_and_another_method_answer_with_listed_codes(tmp_path: Path) -> None:
    """aiohttp's own refusals come as the API's error body with codes of refusals.py (they
    were made from its reason phrases, listed nowhere, and the 405 lost its Allow)."""
    store = IdempotencyStore(tmp_path)
    ctx = ApiContext(devices=[], store=store, metrics=SyncdMetrics(), status=dict)
    json_type = {"Content-Type": "application/json"}
    try:
        async with TestClient(TestServer(PosApi(ctx).app())) as client:
            resp = await client.post("/v1/status", data=b"{}", headers=json_type)
            body = await resp.json()
            assert (resp.status, body["error"]) == (405, "METHOD_NOT_ALLOWED")
            assert "GET" in resp.headers["Allow"].replace(" ", "").split(",")
            resp = await client.get("/v1/no-such-route")
            body = await resp.json()
            assert (resp.status, body["error"]) == (404, "NOT_FOUND")
            assert "no route" in body["detail"]
            assert {body["error"], "METHOD_NOT_ALLOWED"} <= set(refusals.ERROR_CODES)
    finally:
        store.close()
