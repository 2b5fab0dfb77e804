"""A retry goes where its key was first sent: with two printers and no printer named, a
sale claimed on one is never issued again on the other, whichever printer syncd would pick
for a new sale now."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from syncd.api import ApiContext, PosApi
from syncd.attachment import Attachment
from syncd.idempotency import IdempotencyStore
from syncd.link import LinkSettings
from syncd.metrics import SyncdMetrics
from tests.device.conftest import INVOICE
from tests.syncd.inprocess import post_json, printer_link

SETTINGS = LinkSettings(response_timeout=0.5, status_interval=0.2, reopen_max=0.1)


async def test_a_retry_with_no_printer_named_goes_to_the_printer_of_the_first_attempt(
    tmp_path: Path,
) -> None:
    async with (
        printer_link(tmp_path / "a", SETTINGS) as (fw_a, link_a),
        printer_link(tmp_path / "b", SETTINGS) as (fw_b, link_b),
    ):
        assert await link_a.wait_online(10) and await link_b.wait_online(10)
        store = IdempotencyStore(tmp_path / "syncd")
        a, b = Attachment(link_a), Attachment(link_b)
        devices = [b, a]  # a sale with no printer named goes to the first one online: b
        ctx = ApiContext(devices=devices, store=store, metrics=SyncdMetrics(), status=dict)
        http: TestClient[Any, Any] = TestClient(TestServer(PosApi(ctx).app()))
        await http.start_server()
        try:
            status, first = await post_json(http, "/v1/invoices", INVOICE, "sale-1")
            assert status == 201, first
            assert first["device_id"] == link_b.device_id
            devices.reverse()  # a new sale would now go to a
            status, again = await post_json(http, "/v1/invoices", INVOICE, "sale-1")
            assert status == 200, again
            assert (again["device_id"], again["counter"], again["retry"]) == (
                link_b.device_id,
                first["counter"],
                True,
            )
            assert again["cose_sign1"] == first["cose_sign1"]
            assert (fw_a.journal.count(), fw_b.journal.count()) == (0, 1)
            status, new = await post_json(http, "/v1/invoices", INVOICE, "sale-2")
            assert (status, new["device_id"]) == (201, link_a.device_id)
        finally:
            await http.close()
            store.close()
