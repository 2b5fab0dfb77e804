"""docs/pos-openapi.yaml as data, and a check of one POS answer against it.

Used by tests/syncd/test_pos_openapi.py and by the recorder in tests/syncd/conftest.py,
which checks every answer the syncd tests get from the POS API. The schemas are made strict
(`additionalProperties: false` where a schema lists properties and says nothing else, as in
tests/hostsim/chain/test_openapi.py), so an undocumented field in an answer is caught.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

from syncd import refusals
from tests import openapi
from tests.openapi import strict

SPEC, DOC = openapi.load("pos-openapi.yaml")
MAX_RECORDED = 5000  # answers kept per test: far more than any test makes; bounds memory


def resolve(node: Any) -> Any:
    return openapi.resolve(DOC, node)


OPERATIONS = openapi.operations(DOC)
ERROR = resolve(DOC["components"]["schemas"]["Error"])


def _pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}]+\})", template)
    return re.compile("".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts if p))


TEMPLATES = [(_pattern(path), path) for path in DOC["paths"]]


def template_of(path: str) -> str | None:
    for pattern, template in TEMPLATES:
        if pattern.fullmatch(path):
            return template
    return None


@cache
def _validator(method: str, template: str, status: int) -> Draft202012Validator:
    media = OPERATIONS[(method, template)]["responses"][str(status)]["content"]
    schema = next(iter(media.values()))["schema"]
    return Draft202012Validator(strict(schema))


@dataclass
class Answer:
    method: str
    path: str
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)  # names in lower case


def problem(answer: Answer) -> str | None:
    """What is wrong with this answer by the document, or None."""
    method, status = answer.method, answer.status
    if method == "HEAD":
        return None  # aiohttp's automatic HEAD of a GET: the GET's headers, no body
    template = template_of(answer.path)
    op = OPERATIONS.get((method, template)) if template else None
    where = f"{method} {answer.path} -> {status}"
    if op is None:
        # no such operation: only the refusals every route gives, and a CORS preflight
        if method == "OPTIONS" and status == 204 and not answer.body:
            return None
        if status < 400:
            return f"{where}: an answer to no documented operation"
        return _error_problem(where, answer, ERROR, codes=None)
    response = op["responses"].get(str(status))
    if response is None:
        return f"{where}: status not documented for {method} {template}"
    documented = response.get("content", {})
    if answer.content_type not in {m.split(";")[0] for m in documented}:
        return f"{where}: content type {answer.content_type!r}, documented {sorted(documented)}"
    if status >= 400:
        schema = next(iter(documented.values()))["schema"]
        return _error_problem(where, answer, schema, codes=response.get("x-error-codes"))
    for name in response.get("headers", {}):
        if name.lower() not in answer.headers:
            return f"{where}: no {name} header"
    if answer.content_type != "application/json":
        return None
    try:
        value = json.loads(answer.body)
    except ValueError:
        return f"{where}: not JSON"
    errors = sorted(_validator(method, template or "", status).iter_errors(value), key=str)
    if errors:
        first = errors[0]
        return f"{where}: {first.message} at {list(first.absolute_path)}"
    return None


def _error_problem(
    where: str, answer: Answer, schema: dict[str, Any], codes: list[str] | None
) -> str | None:
    if answer.content_type != "application/json":
        return f"{where}: a refusal in {answer.content_type!r}, not JSON"
    try:
        value = json.loads(answer.body)
    except ValueError:
        return f"{where}: a refusal that is not JSON"
    errors = list(Draft202012Validator(strict(schema)).iter_errors(value))
    if errors:
        return f"{where}: {errors[0].message}"
    code = value["error"]
    if answer.status not in refusals.http_statuses(code):
        return f"{where}: {code} comes with {sorted(refusals.http_statuses(code))}"
    if codes is not None and code not in codes:
        return f"{where}: {code} is not in this response's x-error-codes"
    if answer.status == 503 and "retry-after" not in answer.headers:
        return f"{where}: a 503 without Retry-After"
    return None


class Recorder:
    """POS answers seen during one test (bounded), checked once it is over."""

    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.dropped = 0
        self.active = False
        self.checked = 0  # over the session, for the summary line

    def add(self, answer: Answer) -> None:
        if not self.active:
            return
        if len(self.answers) >= MAX_RECORDED:
            self.dropped += 1
            return
        self.answers.append(answer)

    def problems(self) -> list[str]:
        self.checked += len(self.answers)
        return [p for a in self.answers if (p := problem(a)) is not None]


RECORDER = Recorder()
