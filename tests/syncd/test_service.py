"""Operating syncd: sd_notify, SIGTERM, SIGHUP, config errors, the POS API's every path."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from tests.helpers import run_taxctl
from tests.shop import INVOICE, Shop, http, wait_for


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.path = path
        self.messages: list[str] = []
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    def has(self, prefix: str) -> bool:
        return any(line.startswith(prefix) for m in self.messages for line in m.split("\n"))

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


def test_sd_notify_sigterm_and_sighup(shop: Shop, tmp_path: Path) -> None:
    shop.start_chain()
    shop.start_device("printer")
    shop.start_device("second")
    notify = NotifySocket(tmp_path / "notify.sock")
    config = tmp_path / "syncd.toml"
    config.write_text(
        f'state = "{tmp_path / "syncd"}"\n[chain]\nurls = ["{shop.chain_url}"]\n'
        f'[api]\nlisten = "127.0.0.1:0"\n'
        f'[[device]]\nport = "{shop.link("printer")}"\nname = "till-1"\n'
    )
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "200000"}
    try:
        proc = shop.spawn_syncd_config(config, env)
        wait_for(lambda: notify.has("READY=1"), 10, "READY=1")
        wait_for(lambda: notify.has("WATCHDOG=1"), 10, "WATCHDOG=1")
        wait_for(lambda: notify.has("STATUS=1 device"), 10, "STATUS=")
        assert len(shop.status()["devices"]) == 1
        # SIGHUP: a second printer appears in the config and is attached without a restart
        config.write_text(
            config.read_text() + f'[[device]]\nport = "{shop.link("second")}"\nname = "till-2"\n'
        )
        notify.messages.clear()
        proc.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: notify.has("RELOADING=1"), 10, "RELOADING=1")
        wait_for(lambda: notify.has("READY=1"), 10, "READY=1 after reload")
        wait_for(lambda: len(shop.status()["devices"]) == 2, 10, "second device attached")
        # a broken config on SIGHUP is reported and the running one kept
        config.write_text(config.read_text().replace("urls = [", "urls = 5 #["))
        proc.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert proc.proc.poll() is None and len(shop.status()["devices"]) == 2
        # SIGTERM: STOPPING=1, clean exit
        assert proc.stop() == 0
        assert notify.has("STOPPING=1")
    finally:
        notify.close()


def test_config_errors_name_the_key_and_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[chain]\nurls = ["http://127.0.0.1:1"]\n\n[sync]\nbatch_max = "lots"\n')
    out = run_taxctl("syncd", "run", "--config", str(config), "--device", "x")
    assert out.returncode == 2
    assert "sync.batch_max" in out.stderr and "bad.toml:5" in out.stderr, out.stderr
    config.write_text('[chain]\nurls = ["http://127.0.0.1:1"]\n')
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "taxctl",
            "syncd",
            "run",
            "--config",
            str(config),
            "--device",
            "x",
            "--sync-batch-max",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "--sync-batch-max" in out.stderr, out.stderr


def test_pos_api_paths(shop: Shop) -> None:
    shop.start_chain()
    device = shop.start_device()
    shop.start_syncd()
    api = shop.api
    key = str(uuid.uuid4())
    status, first, headers = http("POST", f"{api}/v1/invoices", INVOICE, {"Idempotency-Key": key})
    assert status == 201 and headers["Idempotency-Key"] == key
    assert (
        first["cose_sign1"]
        and first["check_code"]
        and first["receipt"]["qr"].startswith("taxctl:v1?")
    )
    status, again, _ = http("POST", f"{api}/v1/invoices", INVOICE, {"Idempotency-Key": key})
    assert status == 200 and again["retry"] is True
    assert (again["counter"], again["cose_sign1"]) == (first["counter"], first["cose_sign1"])
    other = {**INVOICE, "buyer": {"name": "Someone else"}}
    status, body, _ = http("POST", f"{api}/v1/invoices", other, {"Idempotency-Key": key})
    assert (status, body["error"]) == (422, "IDEMPOTENCY_KEY_REUSED")  # IETF idempotency draft
    status, body, _ = http("POST", f"{api}/v1/invoices", INVOICE, {"Idempotency-Key": "x" * 500})
    assert (status, body["error"]) == (400, "BAD_IDEMPOTENCY_KEY")
    status, body, _ = http(
        "POST", f"{api}/v1/invoices", b"{not json", {"Content-Type": "application/json"}
    )
    assert (status, body["error"]) == (400, "BAD_JSON")
    bad_rate = {"items": [{"name": "Tea", "quantity": "1", "unit_price": 100, "tax_rate_bp": 1234}]}
    status, body, _ = http("POST", f"{api}/v1/invoices", bad_rate)
    assert status == 422 and body["error"] == "UNKNOWN_TAX_RATE" and body["message"]
    status, body, _ = http("POST", f"{api}/v1/invoices", {**INVOICE, "device": "nope"})
    assert (status, body["error"]) == (404, "UNKNOWN_DEVICE")
    # paper out on the running printer, then loaded again
    os.kill(device.proc.pid, signal.SIGUSR1)
    time.sleep(0.2)
    status, body, _ = http("POST", f"{api}/v1/invoices", INVOICE)
    assert (status, body["error"]) == (503, "PAPER_OUT") and "paper" in body["message"].lower()
    os.kill(device.proc.pid, signal.SIGUSR1)
    time.sleep(0.2)
    status, body, _ = http("POST", f"{api}/v1/invoices", INVOICE)
    assert status == 201, body
    # credit note, reports, reprints
    credit = {"refers_to": {"code": first["code"], "number": first["number"]}, "reason": "returned"}
    status, note, _ = http("POST", f"{api}/v1/credit-notes", credit)
    assert status == 201 and note["kind"] == "credit" and note["total"] == -first["total"]
    status, body, _ = http("POST", f"{api}/v1/credit-notes", credit)
    assert status == 409 and body["error"] == "CREDIT_EXCEEDS_ORIGINAL", body
    for kind in ("x", "z"):
        status, report, _ = http("POST", f"{api}/v1/reports/{kind}", {})
        assert status == 201 and report["kind"] == f"{kind}_report", report
    status, reprint, _ = http("GET", f"{api}/v1/invoices/{first['code']}/{first['number']}")
    assert status == 200 and reprint["cose_sign1"] == first["cose_sign1"]
    # the printer's signed QR (offline 查验), the same on the reprint; local time with zone
    assert "&s=" in first["receipt"]["qr"] and reprint["receipt"]["qr"] == first["receipt"]["qr"]
    assert " +08:00" in first["receipt"]["text"]
    status, reprint, _ = http("GET", f"{api}/v1/documents/{first['counter']}")
    assert status == 200 and reprint["cose_sign1"] == first["cose_sign1"]
    status, body, _ = http("GET", f"{api}/v1/documents/99999")
    assert status == 404
    status, text, _ = http("GET", f"{api}/metrics")
    for name in (
        "taxctl_syncd_pending_documents",
        "taxctl_syncd_oldest_unsynced_age_seconds",
        "taxctl_syncd_submit_latency_seconds",
        "taxctl_syncd_chain_errors_total",
        "taxctl_syncd_link_up",
    ):
        assert name in text
    shop.wait_synced(5)
    table = run_taxctl("syncd", "status", "--api", api.removeprefix("http://"))
    assert table.returncode == 0 and "DEVICE" in table.stdout and "online" in table.stdout


def test_register_command(shop: Shop) -> None:
    shop.start_chain()
    shop.start_device()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "taxctl",
            "syncd",
            "register",
            "--device",
            str(shop.link()),
            "--chain",
            shop.chain_url,
            "--taxpayer",
            "91350100M000100Y43",
            "--name",
            "ACME",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    device_id = shop.devices["printer"].ready["device_id"]
    status, body, _ = http("GET", f"{shop.chain_url}/v1/devices/{device_id}", headers=shop.auditor)
    assert status == 200 and body["registration"]["training"] is True
    ports = run_taxctl("ports", "--json", str(shop.link()))
    assert ports.returncode == 0, ports.stderr
    found = {p["port"]: p["device_id"] for p in json.loads(ports.stdout)}
    assert found[str(shop.link())] == device_id


def test_a_bad_flag_is_named_as_it_is_typed(tmp_path: Path) -> None:
    import pytest

    from syncd import config as config_mod

    for argv, flag in (
        (["--api", "127.0.0.1:99999"], "--api"),
        (["--baud", "3"], "--baud"),
        (["--sync-batch-max", "0"], "--sync-batch-max"),
    ):
        args = config_mod.namespace(
            [
                "--config",
                str(tmp_path / "none.toml"),
                "--device",
                "x",
                "--chain",
                "http://a:1",
                *argv,
            ]
        )
        (tmp_path / "none.toml").write_text("")
        with pytest.raises(config_mod.ConfigError) as caught:
            config_mod.load(args, environ={})
        assert str(caught.value).startswith(f"{flag}:"), str(caught.value)


def test_a_printer_not_yet_identified_is_offline_to_the_tills_not_unknown(shop: Shop) -> None:
    shop.start_chain()
    device_id = shop.start_device().ready["device_id"]
    shop.devices["printer"].stop()  # known printer, but not answering while syncd starts
    shop.start_syncd(wait_online=False)
    sale = {**INVOICE, "device": device_id}
    status, body, headers = http("POST", f"{shop.api}/v1/invoices", sale)
    assert (status, body["error"]) == (503, "DEVICE_OFFLINE"), body
    assert "not yet identified" in body["detail"] and headers["Retry-After"]
    shop.start_device()
    wait_for(lambda: shop.issue(sale)[0] == 201, 20, "the printer to answer")
