"""/metrics of a real syncd: a configured printer it never reached is visible as down."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from device.client import ClientStats
from syncd.metrics import LINK_EVENTS
from tests.shop import Shop, http, wait_for

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def start(shop: Shop, tmp_path: Path, port: Path) -> None:
    shop.start_chain()
    config = tmp_path / "syncd.toml"
    config.write_text(
        f'state = "{tmp_path / "syncd"}"\n[chain]\nurls = ["{shop.chain_url}"]\n'
        f'[api]\nlisten = "127.0.0.1:0"\n[link]\nreopen_max = 0.2\n'
        f'[[device]]\nport = "{port}"\nname = "till-1"\n'
    )
    shop.spawn_syncd_config(config, {})


def scrape(shop: Shop) -> tuple[str, Samples]:
    status, text, _ = http("GET", f"{shop.api}/metrics")
    assert status == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(str(text)):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return str(text), samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_a_printer_never_reached_is_down_from_the_start(shop: Shop, tmp_path: Path) -> None:
    port = tmp_path / "no-such-printer"  # a typo in `port`, or unplugged at boot
    start(shop, tmp_path, port)
    _, samples = scrape(shop)
    till = {"device": "till-1"}
    assert value(samples, "taxctl_syncd_link_up", **till, port=str(port)) == 0
    assert value(samples, "taxctl_syncd_can_issue", **till) == 0
    for event in LINK_EVENTS:
        assert value(samples, "taxctl_syncd_link_events_total", **till, event=event) == 0
    assert value(samples, "taxctl_syncd_documents_submitted_total", **till) == 0
    assert value(samples, "taxctl_syncd_chain_errors_total", code="UNAVAILABLE") == 0
    assert value(samples, "taxctl_syncd_task_failures_total", task="sync", port=str(port)) == 0
    assert value(samples, "taxctl_syncd_build_info", version=_version()) == 1
    assert value(samples, "process_start_time_seconds") is not None
    http("GET", f"{shop.api}/v1/status")
    _, samples = scrape(shop)
    assert value(samples, "taxctl_syncd_pos_requests_total", route="/v1/status", code="200") == 1


def test_once_the_printer_answers_its_series_move_to_its_id(shop: Shop, tmp_path: Path) -> None:
    start(shop, tmp_path, shop.link("printer"))
    shop.start_device("printer")
    wait_for(lambda: shop.status()["devices"][0]["state"] == "online", 15, "printer online")
    device_id = shop.status()["devices"][0]["device_id"]
    text, samples = scrape(shop)
    assert 'device="till-1"' not in text
    assert value(samples, "taxctl_syncd_link_up", device=device_id, port=str(shop.link())) == 1
    assert value(samples, "taxctl_syncd_link_reconnects_total", device=device_id) == 0


def promtool(text: str) -> tuple[int, str]:
    out = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    return out.returncode, out.stdout + out.stderr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_finds_nothing_to_say(shop: Shop, tmp_path: Path) -> None:
    """Before the printer answered (placeholder series) and after it issued."""
    start(shop, tmp_path, shop.link("printer"))
    before, _ = scrape(shop)
    assert promtool(before) == (0, "")
    shop.start_device("printer")
    wait_for(lambda: shop.status()["devices"][0]["state"] == "online", 15, "printer online")
    assert shop.issue()[0] == 201
    after, _ = scrape(shop)
    assert "taxctl_syncd_issued_through{" in after
    assert promtool(after) == (0, "")


def test_every_link_statistic_has_a_series() -> None:
    fields = set(ClientStats().as_dict()) - {"requests", "responses"}
    assert set(LINK_EVENTS) == fields


def _version() -> str:
    from taxctl import __version__

    return __version__
