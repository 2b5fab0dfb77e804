"""Running taxctl's own processes from a driver (the demo, benchmarks, tests).

Each long-running taxctl command prints one JSON "ready" line on stdout
once it serves; `Child` starts one and waits for that line.
"""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

READY_TIMEOUT = 30.0


def read_ready(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any] | None:
    """The JSON ready line a taxctl process prints on stdout once it serves; None if
    it exits or the time runs out first. Other lines before it are passed over."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        readable, _, _ = select.select([proc.stdout], [], [], 0.1)
        if readable:
            line = proc.stdout.readline()
            if not line:
                return None
            data = json.loads(line)
            if data.get("event") == "ready":
                return dict(data)
        if proc.poll() is not None:
            return None
    return None


class Child:
    """A taxctl subprocess that prints one JSON ready line on stdout."""

    def __init__(self, name: str, args: list[str], log: Path) -> None:
        self.name = name
        self.args = args
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "taxctl", *args],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        ready = read_ready(self.proc, READY_TIMEOUT)
        if ready is None:
            self.stop()
            raise RuntimeError(f"the {name} did not start; see {log}")
        self.ready = ready

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def http(method: str, url: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    """(status, JSON answer) of one request; HTTP errors are answers, not exceptions."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def wait_status(
    api: str,
    done: Callable[[dict[str, Any]], bool],
    what: str,
    timeout: float = 30.0,
    interval: float = 0.1,
) -> dict[str, Any]:
    """Poll syncd's /v1/status until `done` holds; the status that satisfied it."""
    deadline = time.monotonic() + timeout
    while True:
        status = dict(http("GET", f"{api}/v1/status")[1])
        if done(status):
            return status
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}: {status['devices']}")
        time.sleep(interval)


def all_online(status: dict[str, Any]) -> bool:
    return all(d["state"] == "online" for d in status["devices"])
