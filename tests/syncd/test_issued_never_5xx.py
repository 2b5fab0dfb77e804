"""A document the printer has signed never gets a 5xx from the POS API.

The attack (or accident): the printer issues an invoice, but syncd cannot
check or render its answer; the POS got 500 "try again", and a retry with a
new key issued a second invoice for the same sale.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from device.protocol.keys import KeyPair
from syncd import api as api_mod
from syncd.link import LinkSettings
from tests.device.conftest import INVOICE
from tests.syncd.inprocess import Till, pos_till, post_json


@pytest.fixture
async def till(tmp_path: Path) -> AsyncIterator[Till]:
    settings = LinkSettings(response_timeout=0.5, status_interval=0.2, reopen_max=0.1)
    async with pos_till(tmp_path, settings) as shop_till:
        yield shop_till


async def post(http: TestClient[Any, Any], key: str) -> tuple[int, dict[str, Any]]:
    return await post_json(http, "/v1/invoices", INVOICE, key)


async def test_a_document_that_does_not_verify_is_201_with_a_warning(
    till: Till,
) -> None:
    fw, link, http = till.fw, till.link, till.http
    assert link.info is not None
    # syncd's idea of the key is off
    link._info = replace(link.info, public_key=KeyPair.generate().public_key)
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
    till: Till, monkeypatch: pytest.MonkeyPatch
) -> None:
    fw, http = till.fw, till.http

    def broken(*_: Any, **__: Any) -> dict[str, Any]:
        raise ValueError("a renderer bug")

    monkeypatch.setattr(api_mod, "document_json", broken)
    status, body = await post(http, "sale-2")
    assert status == 201, body
    assert body["warning"]["code"] == "DOCUMENT_UNCHECKED" and body["counter"] == 1
    assert fw.journal.count() == 1
