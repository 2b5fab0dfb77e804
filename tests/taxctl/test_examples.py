"""The programs in examples/ run: over loop://, over a pty, and against a real syncd."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
from pathlib import Path

import pytest

from device.app import open_device
from device.protocol.clock import ManualClock
from device.server import DeviceServer
from device.transport import create_pty
from syncd.link import LinkSettings
from tests.device.conftest import wide_limits
from tests.syncd.inprocess import pos_till

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


async def run(script: str, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / script),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_serial_session_runs_over_loop() -> None:
    code, out, err = await run("serial_session.py")
    assert code == 0, err
    assert "training" in out and "same signed bytes: True" in out
    assert "X report: 2 documents (1 invoices, 1 credit notes)" in out


async def test_the_serial_session_runs_on_a_port_given_as_argument(tmp_path: Path) -> None:
    fw = open_device(tmp_path / "state", training=True, clock=ManualClock(), limits=wide_limits())
    port = create_pty(tmp_path / "tty")
    stop = asyncio.Event()
    task = asyncio.create_task(DeviceServer(fw, port).serve(stop))
    try:
        code, out, err = await run("serial_session.py", str(tmp_path / "tty"))
        assert code == 0, err
        assert fw.settings.device_id in out and "credit note" in out
        assert fw.journal.count() == 3  # the invoice, its credit note, the X report
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        port.close()
        fw.close()


async def test_the_serial_session_explains_a_missing_port(tmp_path: Path) -> None:
    code, _, err = await run("serial_session.py", str(tmp_path / "ttyUSB7"))
    assert code == 1 and "PortError: no serial port" in err and "Traceback" not in err


@pytest.mark.skipif(
    importlib.util.find_spec("syncd.posclient") is None, reason="syncd.posclient not merged yet"
)
async def test_the_pos_till_runs_against_syncd(tmp_path: Path) -> None:
    async with pos_till(tmp_path, LinkSettings(status_interval=60)) as till:
        url = str(till.http.make_url("/")).rstrip("/")
        code, out, err = await run("pos_http.py", url)
        assert code == 0, err
        assert "same signed document: True" in out and "credit note" in out
        assert till.fw.journal.count() == 2
