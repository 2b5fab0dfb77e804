"""Slow clients cannot take the POS API down: a connection cap within the open-file limit,
head and body deadlines, and a log that stays small while accept() is refused."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import threading
import time
import urllib.error
from collections.abc import Iterator, Sequence
from functools import partial
from http.client import HTTPException
from pathlib import Path
from typing import Any

import pytest

import tests.shop
from taxctl_base.processes import read_ready
from tests.helpers import Process
from tests.shop import INVOICE, Shop, http, wait_for

FILE_LIMIT = 128  # soft and hard: syncd cannot raise it
FLOOD = 300  # slow connections at once: more than the cap, more than the file limit
TIMEOUTS = ("--api-header-timeout", "1.5", "--api-body-timeout", "1.5")


def limited_spawn(
    args: Sequence[str],
    *,
    timeout: float = 20,
    env: dict[str, str] | None = None,
    stderr: Path | None = None,
    limits: tuple[int, int] = (FILE_LIMIT, FILE_LIMIT),
) -> Process:
    """tests.helpers.spawn, with RLIMIT_NOFILE (soft, hard) lowered in the child."""

    def lower_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, limits)

    with open(stderr or os.devnull, "ab") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "taxctl", *args],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, **(env or {})},
            preexec_fn=lower_limit,
        )
    ready = read_ready(proc, timeout)
    if ready is None:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"syncd did not become ready (exit {proc.returncode})")
    return Process(proc, ready)


class SlowClients:
    """FLOOD connections that each send a request head one line at a time, forever;
    one the server closes is opened again at once, so the pressure never lets up."""

    def __init__(self, port: int, count: int = FLOOD) -> None:
        self.port = port
        self.count = count
        self.connects = 0
        self.closed_by_server = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SlowClients:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _open(self) -> socket.socket | None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=1)
            sock.sendall(b"POST /v1/invoices HTTP/1.1\r\nHost: till\r\n")
        except OSError:
            return None
        self.connects += 1
        sock.setblocking(False)
        return sock

    def _run(self) -> None:
        socks: list[socket.socket | None] = [None] * self.count
        while not self._stop.is_set():
            for i, sock in enumerate(socks):
                if sock is None:
                    socks[i] = self._open()
                    continue
                try:
                    sock.send(b"X-Slow: 1\r\n")
                    if sock.recv(1024) == b"":
                        raise ConnectionResetError
                except BlockingIOError:
                    continue
                except OSError:
                    self.closed_by_server += 1
                    sock.close()
                    socks[i] = self._open()
            self._stop.wait(0.2)
        for sock in socks:
            if sock is not None:
                sock.close()


@pytest.fixture
def limited_shop(shop: Shop, monkeypatch: pytest.MonkeyPatch) -> Iterator[Shop]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < FLOOD * 2 + 100:  # this test process holds the flood's sockets
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    shop.start_chain()
    shop.start_device()
    monkeypatch.setattr(tests.shop, "spawn", limited_spawn)
    shop.start_syncd(*TIMEOUTS)
    yield shop
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def api_port(shop: Shop) -> int:
    return int(shop.api.rsplit(":", 1)[1])


def test_a_flood_of_slow_clients_leaves_the_api_the_printer_and_the_log_alone(
    limited_shop: Shop,
) -> None:
    shop = limited_shop
    log = shop.root / "syncd.log"
    log_before = log.stat().st_size
    issued: list[int] = []
    with SlowClients(api_port(shop)) as flood:
        wait_for(lambda: flood.connects > FILE_LIMIT + 20, 30, "more slow clients than fds")
        # a till is answered, again and again, while the flood goes on
        for sale in range(5):
            issued.append(till_issues(shop, f"sale-{sale}"))
        # the printer restarts: its link reopens, though the flood would take every fd
        shop.devices["printer"].stop()
        wait_for(lambda: printer_state(shop) not in ("online", None), 15, "the printer offline")
        shop.start_device()
        wait_for(lambda: printer_state(shop) == "online", 20, "the printer back")
        issued.append(till_issues(shop, "after-restart"))
        # slow clients are cut off over and over (and come back at once)
        wait_for(lambda: flood.closed_by_server > FLOOD, 30, "the flood to churn")
        connections = wait_for(lambda: status_of(shop).get("connections"), 10, "the status")
    assert issued == list(range(1, len(issued) + 1))
    assert 4 <= connections["max"] < FILE_LIMIT
    assert connections["evicted"] + connections["header_timeouts"] > 0
    assert connections["open"] <= connections["max"]
    grown = log.stat().st_size - log_before
    assert grown < 64_000, f"the log grew by {grown} bytes"
    assert "Too many open files" not in log.read_text()


def status_of(shop: Shop) -> dict[str, Any]:
    """/v1/status, or {} while the flood has every connection (a 503 or a closed socket,
    as a till gets: by design, not a failure)."""
    try:
        status, body, _ = http("GET", f"{shop.api}/v1/status")
    except (urllib.error.URLError, ConnectionError, HTTPException):
        return {}
    return body if status == 200 and isinstance(body, dict) else {}


def printer_state(shop: Shop) -> str | None:
    devices = status_of(shop).get("devices") or [{}]
    return devices[0].get("state")


def till_issues(shop: Shop, key: str) -> int:
    """One sale as a till makes it: retried with its key while told to wait (Retry-After),
    within a bound."""
    started = time.monotonic()
    while True:
        try:
            status, body = shop.issue(headers={"Idempotency-Key": key})
        except (urllib.error.URLError, ConnectionError, HTTPException):
            status, body = 0, {}  # closed at once, beyond the cap: try again
        if status == 201:
            return int(body["counter"])
        assert status == 0 or (status, body["error"]) == (503, "TOO_MANY_CONNECTIONS"), body
        assert time.monotonic() - started < 5, "the till waited more than 5 s"
        time.sleep(0.1)


def test_the_soft_file_limit_is_raised_to_the_hard_one(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    shop.start_chain()
    shop.start_device()
    monkeypatch.setattr(tests.shop, "spawn", partial(limited_spawn, limits=(64, 1024)))
    shop.start_syncd()
    connections = shop.status()["connections"]
    assert connections["fd_limit"] == 1024
    assert connections["max"] == 256  # the default cap fits under the raised limit


def test_a_slow_request_head_is_cut_off_after_the_header_timeout(shop: Shop) -> None:
    shop.start_chain()
    shop.start_device()
    shop.start_syncd(*TIMEOUTS)
    with socket.create_connection(("127.0.0.1", api_port(shop)), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: till\r\n")
        closed_after = trickle_until_closed(sock, b"X-Slow: 1\r\n")
    assert 1.0 < closed_after - started < 4.5  # the 1.5 s deadline, not the keep-alive's
    assert http("GET", f"{shop.api}/v1/health")[0] == 200


def test_a_slow_request_body_is_answered_408_and_cut_off(shop: Shop) -> None:
    shop.start_chain()
    shop.start_device()
    shop.start_syncd(*TIMEOUTS)
    with socket.create_connection(("127.0.0.1", api_port(shop)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/invoices HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Idempotency-Key: slow-1\r\nContent-Length: 5000\r\n\r\n{"
        )
        started = time.monotonic()
        received = bytearray()
        closed_after = trickle_until_closed(sock, b" ", received)
    assert 1.0 < closed_after - started < 4.5
    assert received.startswith(b"HTTP/1.1 408 "), bytes(received[:200])
    assert b'"REQUEST_TIMEOUT"' in received
    # nothing was issued or kept: the same key issues the first invoice now
    status, body, _ = http(
        "POST", f"{shop.api}/v1/invoices", INVOICE, {"Idempotency-Key": "slow-1"}
    )
    assert status == 201 and body["counter"] == 1, body


def trickle_until_closed(
    sock: socket.socket, piece: bytes, received: bytearray | None = None, within: float = 8.0
) -> float:
    """Send `piece` every 0.25 s until the server closes; the time it did."""
    sock.settimeout(0.25)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            sock.sendall(piece)
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic()
        if not data:
            return time.monotonic()
        if received is not None:
            received += data
    raise AssertionError(f"the server kept a slow connection open for {within} s")
