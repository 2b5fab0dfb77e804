"""A device answer that arrives intact but cannot be read keeps the POS request's key.

The printer issued the invoice; only its answer was spoiled on the way (a valid CRC
over a body that does not decode). The till is told "outcome unknown", and its retry
with the same Idempotency-Key gets that one invoice — the journal holds one document.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from device.protocol.commands import Command
from device.protocol.framing import Frame, FrameType
from syncd.link import LinkSettings
from tests.device.conftest import INVOICE
from tests.syncd.inprocess import Till, pos_till, post_json, rewriting_opener


class SpoilFirstIssueAnswer:
    """Rewrites the body of the first ISSUE response into bytes that are not CBOR (the
    frame itself stays intact, CRC and all)."""

    spoiled = 0

    def __call__(self, frame: Frame) -> Frame:
        if frame.type != FrameType.RESPONSE or frame.command != Command.ISSUE or self.spoiled:
            return frame
        SpoilFirstIssueAnswer.spoiled += 1
        return Frame(frame.type, frame.request_id, frame.command, frame.status, b"\xff\x00")


@pytest.fixture
async def till(tmp_path: Path) -> AsyncIterator[Till]:
    SpoilFirstIssueAnswer.spoiled = 0
    settings = LinkSettings(response_timeout=0.2, status_interval=0.2, reopen_max=0.1)
    opener = rewriting_opener(SpoilFirstIssueAnswer())
    async with pos_till(tmp_path, settings, opener=opener) as shop_till:
        yield shop_till


async def post_invoice(till: Till, key: str) -> tuple[int, dict[str, Any]]:
    """POST until the link is back (a spoiled answer makes syncd check the link)."""
    for _ in range(100):
        status, body = await post_json(till.http, "/v1/invoices", INVOICE, key)
        if body.get("error") != "DEVICE_OFFLINE":
            return status, body
        await asyncio.sleep(0.1)
    raise AssertionError("the link did not come back")


async def test_an_unreadable_answer_keeps_the_key_and_the_retry_gets_the_one_invoice(
    till: Till,
) -> None:
    status, first = await post_invoice(till, "sale-1")
    assert SpoilFirstIssueAnswer.spoiled == 1
    assert (status, first["error"]) == (503, "OUTCOME_UNKNOWN"), first
    assert first["idempotency_key"] == "sale-1"
    status, again = await post_invoice(till, "sale-1")
    assert status == 200 and again["retry"] is True, again
    assert again["counter"] == 1
    assert till.fw.journal.count() == 1  # the printer issued one invoice, never a second
