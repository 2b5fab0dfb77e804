"""`taxctl hostsim pos` against a real shop: chain, printer and syncd as processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestServer

from hostsim.pos.mix import MixSettings, SaleMix
from hostsim.pos.till import Tills, TillSettings
from tests.helpers import run_taxctl
from tests.shop import Shop, http, wait_for


def run_pos(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run_taxctl("hostsim", "pos", *args, timeout=timeout)


def test_tills_issue_credit_and_retry_then_everything_is_on_the_chain_once(
    shop: Shop, tmp_path: Path
) -> None:
    shop.start_chain()
    device = shop.start_device()
    shop.start_syncd()
    record = tmp_path / "acks.jsonl"
    done = run_pos(
        "--api",
        shop.api,
        "--count",
        "80",
        "--concurrency",
        "6",
        "--credit-share",
        "0.2",
        "--retry-share",
        "0.2",
        "--seed",
        "11",
        "--record",
        str(record),
        "--json",
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["sales"] == 80
    assert summary["acknowledged"] == 80
    assert summary["refused"] == {} and summary["gave_up"] == 0
    assert summary["credit_notes"] > 0 and summary["invoices"] + summary["credit_notes"] == 80
    assert summary["resent_same_key"] > 0 and summary["resend_mismatched"] == 0
    assert 0 < summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"]

    acks = [json.loads(line) for line in record.read_text().splitlines()]
    assert sorted(a["counter"] for a in acks) == list(range(1, 81))  # none twice, none missing
    assert shop.assert_exactly_once_after_sync() == 80
    for ack in acks:
        url = f"{shop.chain_url}/v1/invoices/{ack['code']}/{ack['number']}"
        status, doc, _ = http("GET", url, headers=shop.auditor)
        assert status == 200 and doc["document"]["counter"] == ack["counter"]
        assert doc["document"]["device_id"] == device.ready["device_id"]
    credited = [a for a in acks if a["kind"] == "credit"]
    assert all(a["total"] < 0 for a in credited)


def test_tills_over_the_unix_socket_and_refusals_are_counted(shop: Shop, tmp_path: Path) -> None:
    shop.start_chain()
    device = shop.start_device()
    sock = tmp_path / "api.sock"
    shop.start_syncd("--api-socket", str(sock))
    done = run_pos("--socket", str(sock), "--count", "10", "--retry-share", "0", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["acknowledged"] == 10

    # Paper out (SIGUSR1 toggles it on the running printer): every sale is refused by
    # the printer, counted by its code, and not retried.
    os.kill(device.proc.pid, signal.SIGUSR1)
    wait_for(
        lambda: any("PAPER" in b.upper() for b in shop.device_status()["blocking"] or []),
        10,
        "syncd to see the paper out",
    )
    refused = run_pos("--socket", str(sock), "--count", "5", "--json")
    assert refused.returncode == 1  # nothing acknowledged
    summary = json.loads(refused.stdout)
    assert summary["refused"] == {"PAPER_OUT": 5} and summary["retries"] == 0


def test_bad_arguments_are_refused_with_a_reason() -> None:
    done = run_pos("--credit-share", "2", "--count", "1")
    assert done.returncode == 2
    assert "--credit-share must be between 0 and 1" in done.stderr


async def test_each_sale_goes_out_as_the_mix_drew_it_with_one_key_per_sale() -> None:
    """The bytes a till sends: the mix's body with the printer named last, as
    json.dumps({**body, "device": ...}) writes it, and the same key for its resend."""
    seen: list[tuple[str, bytes]] = []

    async def sale(request: web.Request) -> web.Response:
        seen.append((request.headers["Idempotency-Key"], await request.read()))
        body = {"kind": "invoice", "counter": len(seen), "device_id": "printer-a"}
        body |= {"code": "044000000001", "number": f"{len(seen):08d}", "total": 1}
        return web.json_response(body, status=201)

    app = web.Application()
    app.router.add_post("/v1/invoices", sale)
    app.router.add_post("/v1/credit-notes", sale)
    mix = MixSettings(credit_share=0.2, retry_share=0.2)
    async with TestServer(app, host="127.0.0.1") as server:
        settings = TillSettings(
            api=f"http://127.0.0.1:{server.port}",
            count=60,
            concurrency=1,
            seed=5,
            devices=("printer-a", "printer-b"),
            mix=mix,
        )
        report = await Tills(settings).run()
    assert len(report.acknowledged) == 60 and report.resent > 0
    oracle, sent = SaleMix(5, mix), iter(seen)
    for index, ack in enumerate(report.acknowledged):
        drawn = oracle.next_sale()
        device = drawn.device or settings.devices[index % 2]
        expected = json.dumps({**drawn.body, "device": device}, ensure_ascii=False).encode()
        key, body = next(sent)
        assert (key, body) == (ack.key, expected)
        assert uuid.UUID(hex=key).version == 4
        if drawn.resend:
            assert next(sent) == (key, expected)  # resent as it was: same key, same bytes
        if ack.kind == "invoice":
            oracle.issued(ack.code, ack.number, ack.device_id)
    assert next(sent, None) is None
