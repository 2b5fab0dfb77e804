"""The connection gate's bounds in one process: accept errors, repeated asyncio errors, fds."""

from __future__ import annotations

import asyncio
import errno
import logging
from typing import Any

import pytest

from syncd import fdlimit
from syncd.apiserver import ConnectionGate, GateSettings, LogThrottle, loop_exception_handler


class OutOfFiles:
    """A listening socket whose accept() fails as it does when no descriptor is left."""

    def __init__(self) -> None:
        self.calls = 0

    def accept(self) -> Any:
        self.calls += 1
        raise OSError(errno.EMFILE, "Too many open files")

    def fileno(self) -> int:
        return 1_000_000  # never registered: remove_reader of it is a no-op


async def test_accept_errors_pause_accepting_and_are_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = ConnectionGate(asyncio.Protocol, GateSettings(4, 1.0))
    sock = OutOfFiles()
    with caplog.at_level(logging.ERROR, logger="taxctl.syncd.api"):
        for _ in range(1000):  # what a level-triggered loop would do without the pause
            gate._accept(sock)  # type: ignore[arg-type]
    assert sock.calls == 1000  # one accept() per readiness: the pause stops the spinning
    assert gate.accept_errors == 1000
    lines = [r for r in caplog.records if "cannot accept" in r.getMessage()]
    assert len(lines) == 1 and "Too many open files" in lines[0].getMessage()


def test_a_throttled_line_reports_how_many_were_held_back(caplog: pytest.LogCaptureFixture) -> None:
    throttle = LogThrottle(logging.getLogger("taxctl.test"), interval=0.0)
    assert throttle.admit("k") == 0
    slow = LogThrottle(logging.getLogger("taxctl.test"), interval=3600)
    with caplog.at_level(logging.INFO, logger="taxctl.test"):
        for _ in range(500):
            slow("k", logging.INFO, "event")
    assert [r.getMessage() for r in caplog.records] == ["event"]
    slow.interval = 0.0
    with caplog.at_level(logging.INFO, logger="taxctl.test"):
        slow("k", logging.INFO, "event")
    assert caplog.records[-1].getMessage() == "event (and 499 more in the last 0 s)"


def test_a_storm_of_one_asyncio_error_is_one_report() -> None:
    reports: list[dict[str, Any]] = []

    class Loop:
        def default_exception_handler(self, context: dict[str, Any]) -> None:
            reports.append(context)

    handle = loop_exception_handler(LogThrottle(logging.getLogger("taxctl.test"), 3600))
    for _ in range(10_000):
        handle(Loop(), {"message": "socket.accept() out of system resource"})
    handle(Loop(), {"message": "something else"})
    assert [r["message"] for r in reports] == [
        "socket.accept() out of system resource",
        "something else",
    ]


def test_the_cap_leaves_the_reserve_and_each_device_untouched() -> None:
    budget = fdlimit.plan(1024, in_use=20, reserve=64, devices=3, wanted=10_000, overshoot=9)
    assert budget.max_connections == 1024 - 20 - 64 - 3 * fdlimit.PER_DEVICE - 9
    assert fdlimit.plan(8192, 20, 64, 3, 256, 9).max_connections == 256
    assert fdlimit.plan(64, 20, 64, 3, 256, 9).max_connections == fdlimit.MIN_CONNECTIONS
