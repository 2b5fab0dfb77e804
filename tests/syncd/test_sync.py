"""Store-and-forward through real processes: outages, lost responses, partitions, kill -9."""

from __future__ import annotations

import threading
import time

from tests.helpers import export_documents
from tests.shop import Shop, kill9, wait_for


def issue_many(shop: Shop, count: int) -> int:
    ok = 0
    for _ in range(count):
        status, body = shop.issue()
        assert status == 201, body
        ok += 1
    return ok


def test_chain_down_then_back_every_document_once(shop: Shop) -> None:
    shop.start_chain()
    shop.start_device()
    shop.start_syncd()
    issue_many(shop, 3)
    shop.wait_synced(3)
    shop.fault("refuse")
    issue_many(shop, 25)
    wait_for(lambda: shop.status()["chain"]["state"] != "ok", 10, "chain reported down")
    dev = wait_for(
        lambda: (d := shop.device_status())["counter"] == 28 and d, 10, "status refreshed"
    )
    assert dev["synced_through"] == 3 and dev["pending"] == 25
    shop.clear_faults()
    shop.wait_synced(28, timeout=30)
    # the device's offline limits reset: its own STATUS says so
    dev = wait_for(
        lambda: (d := shop.device_status())["offline_since"] is None and d, 10, "limits reset"
    )
    assert dev["can_issue"] and dev["blocking"] == [] and dev["pending"] == 0
    assert shop.assert_exactly_once() == 28


def test_503_lost_responses_and_a_partition(shop: Shop) -> None:
    shop.start_chain()
    shop.start_device()
    shop.start_syncd()
    issue_many(shop, 2)
    shop.wait_synced(2)
    shop.fault("unavailable", count=6)
    issue_many(shop, 10)
    shop.wait_synced(12)
    shop.fault("drop_after_commit", count=3)
    issue_many(shop, 10)
    shop.wait_synced(22)
    shop.fault("drop_mid_response", count=2)
    issue_many(shop, 10)
    shop.wait_synced(32)
    from tests.shop import http

    http("POST", f"{shop.admin}/admin/partition", {"nodes": ["enterprise3"]})
    issue_many(shop, 10)
    shop.wait_synced(42)
    http("POST", f"{shop.admin}/admin/partition", {"nodes": ["enterprise2"]})  # no quorum now
    issue_many(shop, 10)
    time.sleep(1.0)
    assert shop.device_status()["synced_through"] == 42
    http("POST", f"{shop.admin}/admin/heal", {})
    shop.wait_synced(52)
    assert shop.assert_exactly_once() == 52


def test_kill_9_of_syncd_device_and_chain(shop: Shop) -> None:
    shop.start_chain()
    shop.start_device()
    shop.start_syncd("--sync-batch-max", "200")
    shop.fault("refuse")
    issue_many(shop, 600)
    shop.clear_faults()
    time.sleep(0.3)  # syncd is mid-drain
    kill9(shop.syncd)  # type: ignore[arg-type]
    shop.start_syncd("--sync-batch-max", "200")
    shop.wait_synced(600)

    # the printer dies while POS requests are in flight
    results: list[int] = []

    def cashier() -> None:
        for _ in range(40):
            status, _ = shop.issue()
            results.append(status)

    threads = [threading.Thread(target=cashier) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    kill9(shop.devices["printer"])
    shop.start_device()
    for t in threads:
        t.join(120)
    wait_for(lambda: shop.device_status()["state"] == "online", 15, "printer back online")
    issued_ok = results.count(201)
    journal = len(export_documents(shop.root / "printer"))
    # never a second invoice for one request: at most what was asked, at least what was answered
    assert issued_ok <= journal - 600 <= len(results)
    assert all(status in (201, 503) for status in results), results

    # the chain dies in the middle of committing a drain
    shop.fault("refuse")
    issue_many(shop, 300)
    total = len(export_documents(shop.root / "printer"))
    shop.clear_faults()
    time.sleep(0.2)
    kill9(shop.chain)  # type: ignore[arg-type]
    time.sleep(0.5)
    shop.start_chain()
    shop.wait_synced(total, timeout=60)
    assert shop.assert_exactly_once() == total


def test_port_unplugged_and_back(shop: Shop) -> None:
    shop.start_chain()
    shop.start_device()
    shop.start_syncd()
    issue_many(shop, 2)
    shop.devices["printer"].stop()  # the pty goes away: the cable is out
    wait_for(lambda: shop.device_status()["state"] != "online", 10, "device reported offline")
    status, body = shop.issue()
    assert status == 503 and body["error"] in ("DEVICE_OFFLINE", "NO_DEVICE"), body
    shop.start_device()
    wait_for(lambda: shop.device_status()["state"] == "online", 15, "device back online")
    issue_many(shop, 2)
    shop.wait_synced(4)
    assert shop.assert_exactly_once() == 4


def test_failover_to_the_next_chain_node(shop: Shop) -> None:
    shop.start_chain()
    shop.start_device()
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    shop.start_syncd(chains=(dead, shop.chain_url))
    issue_many(shop, 5)
    shop.wait_synced(5)
    assert shop.status()["chain"]["url"] == shop.chain_url
    assert shop.assert_exactly_once() == 5


def test_rejected_documents_are_reported_with_the_chain_code(shop: Shop) -> None:
    from tests.shop import http

    shop.start_chain()
    device = shop.start_device()
    shop.start_syncd("--sync-reject-retries", "2", "--sync-reject-retry-interval", "0.2")
    issue_many(shop, 2)
    shop.wait_synced(2)
    token = (shop.root / "chain" / "admin.token").read_text().strip()
    status, body, _ = http(
        "POST",
        f"{shop.chain_url}/v1/devices/{device.ready['device_id']}/revoke",
        {"reason": "reported stolen"},
        {"Authorization": f"Bearer {token}"},
    )
    assert status == 200, body
    issue_many(shop, 3)

    def reported() -> list[dict[str, object]]:
        return [
            r for r in shop.device_status()["sync"]["rejected"] if r["code"] == "device_revoked"
        ]

    rejected = wait_for(reported, 20, "rejection reported")
    assert rejected[0]["counter"] == 3
    _, metrics, _ = http("GET", f"{shop.api}/metrics")
    assert "taxctl_syncd_rejected_documents" in metrics and "device_revoked" in metrics
    assert shop.device_status()["synced_through"] == 2
    time.sleep(1.0)  # retries are bounded: the chain still holds exactly two documents
    assert len(shop.chain_documents(device.ready["device_id"])) == 2


def test_production_registration_and_automatic_segments(shop: Shop) -> None:
    """A printer on a production chain: the bureau issues an enrolment code
    (`taxctl hostsim bureau enrol`), `taxctl syncd register` is refused without it and
    registers with it; syncd then tops up its numbers with device-signed requests."""
    from tests.helpers import run_taxctl
    from tests.shop import http

    shop.start_chain(training=False)
    _, consortium, _ = http("GET", f"{shop.chain_url}/v1/consortium")
    shop.start_device("printer", "--bureau-key", consortium["bureau_key"], training=False)
    device_id = shop.devices["printer"].ready["device_id"]
    register = [
        *("syncd", "register", "--device", str(shop.link()), "--chain", shop.chain_url),
        *("--taxpayer", "91350100M000100Y43", "--name", "ACME Trading", "--segment-size", "10"),
    ]
    out = run_taxctl(*register)
    assert out.returncode == 1 and "enrolment_required" in out.stderr, out.stderr
    status, _, _ = http("GET", f"{shop.chain_url}/v1/devices/{device_id}", headers=shop.auditor)
    assert status == 404  # refused: nothing created
    enrol = run_taxctl(
        *("hostsim", "bureau", "enrol", "--chain", shop.chain_url, "--name", "ACME Trading"),
        *("--token-file", str(shop.root / "chain" / "admin.token")),
        *("--taxpayer", "91350100M000100Y43"),
    )
    assert enrol.returncode == 0, enrol.stderr
    out = run_taxctl(*register, "--enrolment-code", enrol.stdout.strip())
    assert out.returncode == 0, out.stderr
    assert "certificate serial" in out.stdout and "segment" in out.stdout
    shop.start_syncd("--registration-low-numbers", "4", "--registration-segment-size", "10")
    # more than the first segment: syncd tops it up as numbers run low; a cashier who
    # outruns it is told to try again (503 SEGMENT_EXHAUSTED) and does
    issued = 0
    for _ in range(400):
        status, body = shop.issue()
        if status == 201:
            issued += 1
            if issued == 25:
                break
        else:
            assert (status, body["error"]) == (503, "SEGMENT_EXHAUSTED"), body
            time.sleep(0.05)
    assert issued == 25
    shop.wait_synced(25)
    assert shop.assert_exactly_once() == 25
    device_id = shop.devices["printer"].ready["device_id"]
    _, info, _ = http("GET", f"{shop.chain_url}/v1/devices/{device_id}", headers=shop.auditor)
    assert info["registration"]["training"] is False and len(info["segments"]) >= 3


def test_noisy_serial_line_and_unix_socket_api(shop: Shop) -> None:
    """syncd talks to the printer through a line that flips bits and drops bytes;
    POS requests arrive on the Unix socket. Every invoice once, nothing lost."""
    import json
    import socket

    from tests.helpers import spawn

    shop.start_chain()
    shop.start_device("printer")
    noisy = spawn(
        [
            "hostsim",
            "noisy-link",
            "--device",
            str(shop.link("printer")),
            "--link",
            str(shop.link("noisy")),
            "--corrupt",
            "0.0002",
            "--drop",
            "0.0002",
            "--seed",
            "7",
        ],
        stderr=shop.root / "noisy.log",
    )
    try:
        sock_path = shop.root / "api.sock"
        shop.start_syncd("--api-socket", str(sock_path), devices=("noisy",))
        body = json.dumps(
            {"items": [{"name": "Tea", "quantity": "1", "unit_price": 100, "tax_rate_bp": 1300}]}
        ).encode()
        answered = 0
        for i in range(20):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(60)
                s.connect(str(sock_path))
                s.sendall(
                    b"POST /v1/invoices HTTP/1.1\r\nHost: pos\r\nContent-Type: application/json\r\n"
                    + f"Idempotency-Key: sale-{i}\r\nContent-Length: {len(body)}\r\n".encode()
                    + b"Connection: close\r\n\r\n"
                    + body
                )
                reply = b""
                while chunk := s.recv(65536):
                    reply += chunk
            status = int(reply.split(b" ", 2)[1])
            assert status in (201, 503), reply[:300]
            answered += status == 201
        assert answered >= 15  # a few may time out on the noisy line; none may be doubled
        journal = shop.assert_exactly_once_after_sync()
        assert answered <= journal <= 20
    finally:
        noisy.stop()
    assert noisy.proc.stdout is not None
    stopped = json.loads(noisy.proc.stdout.readline())
    damaged = sum(stopped[d]["corrupted"] + stopped[d]["dropped"] for d in ("to_device", "to_host"))
    assert damaged > 0, stopped
