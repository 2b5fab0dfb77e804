"""Hostile POS requests get a specific 4xx with a bounded message, and change nothing."""

from __future__ import annotations

import json

from tests.shop import INVOICE, Shop, http

LINE = '{"name":"Tea","quantity":"1","unit_price":%s,"tax_rate_bp":1300}'


def invoice_with(unit_price: str) -> bytes:
    return ('{"items":[' + LINE % unit_price + "]}").encode()


DEEP = b"[" * 100_000 + b"]" * 100_000
POSTS: list[tuple[str, str, bytes, int, str]] = [
    # what, route, body, HTTP status, error code
    (
        "lone surrogate in a name",
        "invoices",
        b'{"buyer":{"name":"\\ud800"},"items":[' + (LINE % "100").encode() + b"]}",
        400,
        "BAD_JSON",
    ),
    ("JSON nested 100,000 deep", "invoices", DEEP, 400, "BAD_JSON"),
    ("a report nested 100,000 deep", "reports/x", DEEP, 400, "BAD_JSON"),
    ("NaN", "invoices", invoice_with("NaN"), 400, "BAD_JSON"),
    ("Infinity", "invoices", invoice_with("-Infinity"), 400, "BAD_JSON"),
    ("an integer over 4300 digits", "invoices", invoice_with("9" * 5000), 400, "BAD_JSON"),
    ("an integer of 4000 digits", "invoices", invoice_with("9" * 4000), 400, "BAD_REQUEST"),
    ("an integer past 64 bits", "invoices", invoice_with(str(2**70)), 400, "BAD_REQUEST"),
    (
        "a credit note naming a huge number",
        "credit-notes",
        b'{"refers_to":{"code":"1","number":' + b"9" * 100 + b'},"reason":"x"}',
        400,
        "BAD_REQUEST",
    ),
    ("buyer of the wrong type", "invoices", b'{"buyer":[1,"a",{}],"items":[]}', 422, ""),
    ("items as a map of mixed values", "invoices", b'{"items":{"1":2,"a":[null]}}', 422, ""),
    ("items of mixed types", "invoices", b'{"items":[1,"a",{"x":1},[2]]}', 422, ""),
    ("a device selector of 5000 characters", "invoices", b"", 404, "UNKNOWN_DEVICE"),
]
GETS: list[tuple[str, str, int, str]] = [
    ("a superscript digit as counter", "/v1/documents/%C2%B2", 400, "BAD_REQUEST"),
    ("an Arabic-Indic digit as counter", "/v1/documents/%D9%A3", 400, "BAD_REQUEST"),
    ("a counter past 64 bits", "/v1/documents/" + "9" * 30, 400, "BAD_REQUEST"),
    ("a code of 5000 characters", "/v1/invoices/" + "1" * 5000 + "/00000001", 400, "BAD_REQUEST"),
    ("a number that is not digits", "/v1/invoices/991234567890/%C2%B2%C2%B2", 400, "BAD_REQUEST"),
    ("a device of 3000 characters", "/v1/documents/1?device=" + "x" * 3000, 404, "UNKNOWN_DEVICE"),
    ("a device that is not UTF-8", "/v1/documents/1?device=%ED%A0%80%FF", 404, "UNKNOWN_DEVICE"),
    ("a paper width that is not a number", "/v1/documents/1?paper=%C2%B2", 400, "BAD_REQUEST"),
]


def wrong_answer(what: str, got: tuple[int, object, dict[str, str]], status: int, code: str) -> str:
    """What is wrong with the answer to one hostile request ("" when it is right)."""
    answer_status, body, _ = got
    if not isinstance(body, dict):
        return f"{what}: not a JSON answer: {body!r:.200}"
    if answer_status != status or (code and body.get("error") != code):
        return f"{what}: {answer_status} {str(body)[:300]}"
    # bounded: a message quotes at most a short, escaped piece of the input
    size = len(json.dumps(body, ensure_ascii=False))
    return f"{what}: an answer of {size} characters" if size >= 400 else ""


def test_hostile_requests_get_a_specific_4xx_and_change_nothing(shop: Shop) -> None:
    shop.start_chain()
    shop.start_device()
    shop.start_syncd()
    api = shop.api
    wrong: list[str] = []
    json_type = {"Content-Type": "application/json"}
    for index, (what, route, body, status, code) in enumerate(POSTS):
        if what.startswith("a device selector"):
            body = json.dumps({**INVOICE, "device": "\U0001f600" * 5000}).encode()
        headers = {**json_type, "Idempotency-Key": f"hostile-{index}"}
        got = http("POST", f"{api}/v1/{route}", body, headers)
        wrong.append(wrong_answer(what, got, status, code))
    for what, path, status, code in GETS:
        wrong.append(wrong_answer(what, http("GET", api + path), status, code))
    assert not [w for w in wrong if w], "\n".join(w for w in wrong if w)
    # Nothing was issued, no key was taken: the same key now issues the first invoice.
    status, issued, _ = http(
        "POST", f"{api}/v1/invoices", INVOICE, {"Idempotency-Key": "hostile-0"}
    )
    assert status == 201 and issued["counter"] == 1 and issued["retry"] is False, issued
    log = (shop.root / "syncd.log").read_text()
    assert "Traceback" not in log and "INTERNAL_ERROR" not in log


def test_a_body_too_large_for_one_frame_is_refused_and_keeps_no_key(shop: Shop) -> None:
    """Within the API's 1 MiB but past the 65,535 bytes of a frame: the printer can never be
    asked, so the refusal comes before the key is taken (it was a 500 that kept the key)."""
    shop.start_chain()
    shop.start_device()
    shop.start_syncd()
    api = shop.api
    headers = {"Content-Type": "application/json", "Idempotency-Key": "too-large"}
    huge = json.dumps({**INVOICE, "note": "x" * 70_000}).encode()
    for _ in range(2):  # the retry a till makes gets the same refusal, not a stuck key
        got = http("POST", f"{api}/v1/invoices", huge, headers)
        assert not wrong_answer("a body past one frame", got, 422, "BODY_TOO_LARGE"), got[:2]
    status, issued, _ = http("POST", f"{api}/v1/invoices", INVOICE, headers)
    assert status == 201 and issued["counter"] == 1 and issued["retry"] is False, issued
    log = (shop.root / "syncd.log").read_text()
    assert "Traceback" not in log and "INTERNAL_ERROR" not in log
