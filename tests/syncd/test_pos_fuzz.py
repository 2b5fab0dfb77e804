"""A property-based fuzz of a real syncd (with a real printer and chain, processes over
loopback and a pty) from docs/pos-openapi.yaml: no 500 and no 503 (the printer is healthy),
every refusal the API's error body with a code of its status, and for inputs the document
allows, only the statuses, content types, headers and bodies it documents. Then the
document's links drive a stateful run: issue an invoice, reprint it (by counter and by
code and number), credit it, reprint the credit note.

Bounded: a few examples per operation and a few short stateful runs (well under a minute);
the figures (requests, statuses) are printed for the record."""

from __future__ import annotations

import uuid
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test
from schemathesis import DataGenerationMethod
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from syncd import refusals
from tests.shop import INVOICE, Shop
from tests.syncd.pos_contract import SPEC, resolve

schemathesis.experimental.OPEN_API_3_1.enable()

schema = schemathesis.from_path(
    str(SPEC),
    data_generation_methods=[DataGenerationMethod.positive, DataGenerationMethod.negative],
)
# the stateful run follows links between documents the printer issued: positive data only
positive = schemathesis.from_path(
    str(SPEC), data_generation_methods=[DataGenerationMethod.positive]
)
SEEN: Counter[tuple[str, str, int]] = Counter()  # (method, path, status) of the fuzz
SEEN_STATEFUL: Counter[tuple[str, str, int]] = Counter()  # and of the stateful run


@pytest.fixture(scope="module")
def live_syncd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    shop = Shop(tmp_path_factory.mktemp("pos-fuzz"))
    try:
        shop.start_chain()
        shop.start_device()
        shop.start_syncd()
        yield shop.api
    finally:
        shop.stop_all()
        figures = Counter(status for (_, _, status) in SEEN.elements())
        print(f"\nPOS fuzz: {SEEN.total()} requests, statuses {dict(sorted(figures.items()))}")
        for (method, path, status), count in sorted(SEEN.items()):
            print(f"  {method} {path} {status}: {count}")


def healthy(response: requests.Response, case: Any) -> None:
    """No 5xx at all: a 500 is a bug, and a 503 would mean the healthy printer or syncd
    could not answer."""
    SEEN[(case.method, case.path, response.status_code)] += 1
    assert response.status_code < 500, response.text[:300]


def error_body(response: requests.Response, case: Any) -> None:
    """Every refusal is JSON {"error", "message"} with a code that comes with its status."""
    if response.status_code < 400:
        return
    if not response.headers.get("Content-Type", "").startswith("application/json"):
        # only aiohttp's HTTP parser answers otherwise (400, text/plain), before any route
        # runs: for a negative case that puts a control character in a header or the path
        assert response.status_code == 400, response.text[:300]
        return
    body = response.json()
    assert isinstance(body["error"], str) and isinstance(body["message"], str), body
    assert response.status_code in refusals.http_statuses(body["error"]), body


def listed_error_code(response: requests.Response, case: Any) -> None:
    if response.status_code < 400:
        return
    documented = resolve(case.operation.definition.raw["responses"][str(response.status_code)])
    assert response.json()["error"] in documented["x-error-codes"], response.text[:300]


CONFORMING = (
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    listed_error_code,
)


def checks_for(case: Any, response: requests.Response) -> tuple[Any, ...]:
    """Every answer: healthy, and a refusal in the API's form. For a case the document
    allows, that reached the app (a header with a control character, which a generated
    bearer token can hold, is refused by aiohttp's parser first): conforming too."""
    reached_the_app = response.headers.get("Content-Type", "").startswith(
        ("application/json", "text/plain; version=")
    )
    if case.data_generation_method == DataGenerationMethod.positive and reached_the_app:
        return (healthy, error_body, *CONFORMING)
    return (healthy, error_body)


def steer(case: Any, always: bool = False) -> None:
    """For about half of the cases, make the generated request one the printer takes (a
    sale it can sign, no printer named, a fresh key), so the fuzz and the links reach
    issued documents as well as refusals. The other half stays as generated."""
    if not always and zlib.crc32(repr((case.path, case.query, case.body)).encode()) % 2:
        return
    if isinstance(case.query, dict):
        case.query.pop("device", None)
    if isinstance(case.body, dict):
        case.body.pop("device", None)
    # this syncd has no token: a generated one is ignored, unless aiohttp's parser refuses it
    headers = {k: v for k, v in (case.headers or {}).items() if k != "Authorization"}
    if case.method == "POST":
        headers["Idempotency-Key"] = uuid.uuid4().hex
    case.headers = headers
    if case.path == "/v1/invoices" and isinstance(case.body, dict):
        case.body = {k: v for k, v in INVOICE.items() if k != "buyer"}


@schema.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzz_pos_api(case: Any, live_syncd: str) -> None:
    steer(case)
    response = case.call(base_url=live_syncd, timeout=30)
    case.validate_response(response, checks=checks_for(case, response))


def test_links_issue_reprint_credit(live_syncd: str) -> None:
    """Stateful: each step may follow a link of docs/pos-openapi.yaml from an earlier answer
    (an invoice's counter to its reprint, its code and number to a reprint and a credit
    note), so real documents are reprinted and credited, not only random ones."""

    class Workflow(positive.as_state_machine()):  # type: ignore[misc]
        def before_call(self, case: Any) -> None:
            # every request one the printer takes: this run is about the links between
            # issued documents (test_fuzz_pos_api sends what is generated as it is, too)
            steer(case, always=True)

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": live_syncd, "timeout": 30}

        def validate_response(self, response: Any, case: Any, additional_checks: Any = ()) -> None:
            SEEN_STATEFUL[(case.method, case.path, response.status_code)] += 1
            case.validate_response(response, checks=checks_for(case, response))

    run_state_machine_as_test(
        Workflow,
        settings=settings(
            max_examples=15,
            stateful_step_count=4,
            derandomize=True,  # the same runs each time: CI sees no luck either way
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
    seen = SEEN_STATEFUL
    print(f"\nstateful: {seen.total()} requests: {dict(sorted(seen.items()))}")
    # the links were followed: invoices were issued, then reprinted and credited
    assert seen["POST", "/v1/invoices", 201] > 0, seen
    reprinted = seen["GET", "/v1/documents/{counter}", 200]
    reprinted += seen["GET", "/v1/invoices/{code}/{number}", 200]
    assert reprinted > 0, seen
    assert seen["POST", "/v1/credit-notes", 201] > 0, seen
