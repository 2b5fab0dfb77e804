"""A shop on one machine: chain, printer(s) and syncd, each a real process over ptys.

Shared by the syncd, POS and chaos tests; their conftest imports the `shop` fixture."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hostsim.audit import chain_documents
from tests.helpers import Process, export_documents, invoice, spawn

INVOICE = invoice()


# Called with (method, url, status, headers, body) for every answer http() gets from a POS
# API a Shop started (tests/syncd/conftest.py checks them against docs/pos-openapi.yaml).
POS_APIS: set[str] = set()
ON_POS_ANSWER: list[Callable[[str, str, int, dict[str, str], bytes], None]] = []


def _seen(method: str, url: str, status: int, headers: Any, raw: bytes) -> None:
    if ON_POS_ANSWER and any(url.startswith(f"{api}/") for api in POS_APIS):
        for hook in ON_POS_ANSWER:
            hook(method, url, status, dict(headers), raw)


def http(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> tuple[int, Any, dict[str, str]]:
    data = (
        None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    )
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if (data is not None or method == "POST") and "Content-Type" not in (headers or {}):
        req.add_header("Content-Type", "application/json")  # syncd refuses a write without
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            _seen(method, url, resp.status, resp.headers, raw)
            kind = resp.headers.get("Content-Type", "")
            return (
                resp.status,
                json.loads(raw) if "json" in kind else raw.decode(),
                dict(resp.headers),
            )
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        _seen(method, url, exc.code, exc.headers, raw)
        try:
            body_out: Any = json.loads(raw)
        except ValueError:
            body_out = raw.decode("utf-8", "replace")
        return exc.code, body_out, dict(exc.headers)


def wait_for(check: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Shop:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.chain: Process | None = None
        self.chain_port = 0
        self.devices: dict[str, Process] = {}
        self.syncd: Process | None = None
        self.syncd_args: list[str] = []
        self.api_headers: dict[str, str] = {}  # e.g. the bearer token of api.token_file

    # --- processes -------------------------------------------------------------------------

    def start_chain(self, training: bool = True) -> Process:
        self.chain = spawn(
            [
                "hostsim",
                "chain",
                "--data",
                str(self.root / "chain"),
                "--listen",
                f"127.0.0.1:{self.chain_port}",
                *(["--training"] if training else []),
                "--faults",
                "--block-interval-ms",
                "5",
                "--workers",
                "0",
            ],
            stderr=self.root / "chain.log",
        )
        self.chain_port = int(self.chain.ready["url"].rsplit(":", 1)[1])
        self.chain_url = self.chain.ready["url"]
        self.admin = self.chain.ready["admin_url"]
        return self.chain

    def start_device(self, name: str = "printer", *extra: str, training: bool = True) -> Process:
        proc = spawn(
            [
                "device",
                "run",
                "--state",
                str(self.root / name),
                "--link",
                str(self.link(name)),
                *(["--training"] if training else []),
                *extra,
            ],
            stderr=self.root / f"{name}.log",
        )
        self.devices[name] = proc
        return proc

    def link(self, name: str = "printer") -> Path:
        return self.root / f"{name}.tty"

    def start_syncd(
        self,
        *extra: str,
        env: dict[str, str] | None = None,
        devices: tuple[str, ...] = ("printer",),
        chains: tuple[str, ...] = (),
        wait_online: bool = True,
    ) -> Process:
        args = [
            "syncd",
            "run",
            "--state",
            str(self.root / "syncd"),
            "--api",
            "127.0.0.1:0",
            *[a for url in chains or (self.chain_url,) for a in ("--chain", url)],
            "--link-status-interval",
            "0.2",
            "--sync-poll-interval",
            "0.1",
            "--link-reopen-max",
            "0.2",
            *extra,
        ]
        for name in devices:
            args += ["--device", str(self.link(name))]
        self.syncd_args = args
        self.syncd = spawn(args, env=env, stderr=self.root / "syncd.log")
        self.api = self.syncd.ready["url"]
        POS_APIS.add(self.api)
        if not wait_online:
            return self.syncd
        wait_for(
            lambda: all(d["state"] == "online" for d in self.status()["devices"]),
            15,
            "devices online",
        )
        return self.syncd

    def spawn_syncd_config(self, config: Path, env: dict[str, str]) -> Process:
        self.syncd = spawn(
            ["syncd", "run", "--config", str(config), "--link-status-interval", "0.2"],
            env=env,
            stderr=self.root / "syncd.log",
        )
        self.api = self.syncd.ready["url"]
        POS_APIS.add(self.api)
        return self.syncd

    def stop_all(self) -> None:
        for proc in [self.syncd, *self.devices.values(), self.chain]:
            if proc is not None:
                proc.stop()
        if self.syncd is not None:
            POS_APIS.discard(self.api)  # its port may serve something else next

    # --- talking to them -------------------------------------------------------------------

    def issue(self, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        headers = {**self.api_headers, **(headers or {})}
        status, out, _ = http("POST", f"{self.api}/v1/invoices", body or INVOICE, headers)
        return status, out

    def status(self) -> dict[str, Any]:
        return http("GET", f"{self.api}/v1/status", headers=self.api_headers)[1]

    def device_status(self, index: int = 0) -> dict[str, Any]:
        return self.status()["devices"][index]

    def fault(self, mode: str, **extra: Any) -> None:
        status, body, _ = http("POST", f"{self.admin}/admin/faults", {"mode": mode, **extra})
        assert status == 200, body

    def clear_faults(self) -> None:
        assert http("DELETE", f"{self.admin}/admin/faults")[0] == 200

    def wait_synced(self, count: int, timeout: float = 60, index: int = 0) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            dev = self.device_status(index)
            return (
                dev
                if dev.get("synced_through", 0) >= count and dev.get("counter") == count
                else None
            )

        return wait_for(done, timeout, f"{count} documents synced")

    @property
    def auditor(self) -> dict[str, str]:
        """Headers with the chain's admin token: the auditor reads every chain route."""
        assert self.chain is not None
        token = Path(self.chain.ready["admin_token_file"]).read_text().strip()
        return {"Authorization": f"Bearer {token}"}

    def chain_documents(self, device_id: str) -> list[tuple[int, bytes]]:
        """(counter, COSE bytes) of every document the chain holds for the device."""
        token = self.auditor["Authorization"].removeprefix("Bearer ")
        return chain_documents(self.chain_url, device_id, token)

    def assert_exactly_once_after_sync(self, name: str = "printer", index: int = 0) -> int:
        """Wait until the journal is synced, then check it is on the chain exactly once."""
        count = len(export_documents(self.root / name))
        self.wait_synced(count, index=index)
        return self.assert_exactly_once(name)

    def assert_exactly_once(self, name: str = "printer") -> int:
        """Every journal document is on the chain once, byte for byte, and nothing else is."""
        journal = export_documents(self.root / name)
        device_id = self.devices[name].ready["device_id"]
        on_chain = self.chain_documents(device_id)
        assert [counter for counter, _ in on_chain] == list(range(1, len(journal) + 1))
        assert [raw for _, raw in on_chain] == [j["raw"] for j in journal]
        return len(journal)


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Shop]:
    s = Shop(tmp_path)
    try:
        yield s
    finally:
        s.stop_all()


def kill9(proc: Process) -> None:
    proc.proc.send_signal(signal.SIGKILL)
    proc.proc.wait(10)
