"""A paced port behaves like a UART: line-rate arithmetic (time injected) and one real pty."""

from __future__ import annotations

import asyncio
import os
import time
import tty
from pathlib import Path

import pytest

from device.pacing import Pacer, bits_per_byte, bytes_per_second, wire_seconds
from device.transport import open_serial


def test_bits_per_byte_follow_the_framing() -> None:
    assert bits_per_byte("N", 1) == 10  # 8N1
    assert bits_per_byte("E", 1) == 11  # 8E1
    assert bits_per_byte("n", 2) == 11  # 8N2
    assert bits_per_byte("O", 2) == 12  # 8O2
    assert bits_per_byte("N", 1.5) == 10.5
    assert bytes_per_second(9600) == 960
    assert bytes_per_second(115200, "E", 1) == pytest.approx(10472.7, abs=0.1)
    assert wire_seconds(960, 9600) == 1.0


def test_an_idle_line_starts_at_once_a_busy_one_queues() -> None:
    pacer = Pacer(960.0)
    assert pacer.send(96, now=10.0) == pytest.approx(0.1)
    # handed over halfway through: waits for the first 96 bytes, then takes its own time
    assert pacer.send(96, now=10.05) == pytest.approx(0.15)
    assert pacer.busy_for(10.1) == pytest.approx(0.1)
    # a line does not save up idle time: after a pause it is just idle
    assert pacer.busy_for(20.0) == 0
    assert pacer.send(48, now=20.0) == pytest.approx(0.05)


def test_a_line_rate_is_positive() -> None:
    with pytest.raises(ValueError, match="more than 0"):
        Pacer(0)


async def test_the_host_side_of_a_pty_is_paced_when_asked(tmp_path: Path) -> None:
    """open_serial(pace=True) at 96,000 baud 8N1 is 9,600 bytes/s: 1,200 bytes take 0.125 s,
    where the same pty unpaced moves them in one write."""
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    link = tmp_path / "tty"
    os.symlink(os.ttyname(slave), link)
    host = open_serial(str(link), baud=96_000, pace=True)
    os.set_blocking(master, False)
    try:
        start = time.monotonic()
        host.write(bytes(1200))
        got = b""
        while len(got) < 1200 and time.monotonic() - start < 10:
            await asyncio.sleep(0.005)
            try:
                got += os.read(master, 65536)
            except BlockingIOError:
                continue
        assert got == bytes(1200)
        assert time.monotonic() - start >= 0.1
    finally:
        host.close()
        os.close(master)
        os.close(slave)


async def test_syncd_paces_a_printer_when_its_config_says_so(tmp_path: Path) -> None:
    from syncd import config
    from syncd.link import DeviceLink, LinkSettings

    path = tmp_path / "syncd.toml"
    path.write_text(
        '[chain]\nurls = ["http://127.0.0.1:1"]\n'
        '[[device]]\nport = "/dev/a"\nbaud = 9600\npace = true\n'
        '[[device]]\nport = "/dev/b"\n'
    )
    paced, plain = config.load(config.namespace(["--config", str(path)])).devices
    assert (paced.pace, plain.pace) == (True, False)
    asked: list[dict[str, object]] = []

    async def opener(port: str, **kwargs: object) -> None:
        asked.append({"port": port, **kwargs})
        raise OSError("no port here")

    for device in (paced, plain):
        await DeviceLink(device, LinkSettings(), opener=opener)._connect()
    assert asked[0]["pace"] is True and asked[0]["baud"] == 9600
    assert "pace" not in asked[1]  # openers that predate pacing still work
