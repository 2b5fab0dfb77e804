from __future__ import annotations

import asyncio
import contextlib
import os
import time
import tty
from pathlib import Path

import pytest

from hostsim.noise import Noise, NoiseSettings
from hostsim.noisylink import NoisyLink


def test_quiet_noise_passes_bytes_unchanged() -> None:
    noise = Noise(NoiseSettings(), seed=1)
    assert noise.apply(b"abc" * 100) == b"abc" * 100
    assert noise.stats.bytes_out == noise.stats.bytes_in == 300


def test_noise_counts_add_up_and_repeat_with_the_seed() -> None:
    settings = NoiseSettings(corrupt_rate=0.01, drop_rate=0.01, burst_rate=0.1, burst_max=20)
    data = bytes(range(256)) * 40
    first, second = Noise(settings, seed=7), Noise(settings, seed=7)
    out = [first.apply(data) for _ in range(20)]
    assert out == [second.apply(data) for _ in range(20)]
    s = first.stats
    assert s.bytes_in == 20 * len(data)
    assert s.bytes_out == s.bytes_in - s.dropped
    assert sum(len(o) for o in out) == s.bytes_out
    assert s.corrupted > 0 and s.dropped > 0


@pytest.mark.parametrize("bad", [{"corrupt_rate": 1.5}, {"drop_rate": -0.1}, {"delay_max": -1}])
def test_settings_refuse_nonsense(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        NoiseSettings(**bad)


class FakeDevice:
    """A pty with a symlink, standing in for a device's serial end."""

    def __init__(self, link: Path) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        os.symlink(os.ttyname(self.slave), link)

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


async def _write_all(fd: int, data: bytes, timeout: float = 5.0) -> None:
    view = memoryview(data)
    deadline = time.monotonic() + timeout
    while view and time.monotonic() < deadline:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            await asyncio.sleep(0.002)
    assert not view, "pty did not drain"


async def _read_until(fd: int, size: int, timeout: float = 5.0) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while len(got) < size and time.monotonic() < deadline:
        try:
            got += os.read(fd, 65536)
        except BlockingIOError:
            await asyncio.sleep(0.005)
    return got


async def test_proxy_carries_bytes_both_ways_in_order(tmp_path: Path) -> None:
    device = FakeDevice(tmp_path / "device")
    link = NoisyLink(
        str(tmp_path / "device"),
        str(tmp_path / "host"),
        NoiseSettings(delay_max=0.002),
        NoiseSettings(delay_max=0.002),
        seed=3,
    )
    await link.start()
    host = os.open(tmp_path / "host", os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    tty.setraw(host)
    try:
        payload = bytes(range(256)) * 64
        writer = asyncio.create_task(_write_all(host, payload))
        assert await _read_until(device.master, len(payload)) == payload
        await writer
        os.write(device.master, b"reply" * 100)
        assert await _read_until(host, 500) == b"reply" * 100
        stats = link.stats()
        assert stats["to_device"]["bytes_out"] == len(payload)  # type: ignore[index]
    finally:
        os.close(host)
        await link.close()
        device.close()
    assert not (tmp_path / "host").exists()


async def test_proxy_reconnects_when_the_device_comes_back(tmp_path: Path) -> None:
    device = FakeDevice(tmp_path / "device")
    link = NoisyLink(
        str(tmp_path / "device"), str(tmp_path / "host"), NoiseSettings(), NoiseSettings(), seed=0
    )
    await link.start()
    host = os.open(tmp_path / "host", os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    tty.setraw(host)
    try:
        device.close()  # the device process dies
        (tmp_path / "device").unlink()
        deadline = time.monotonic() + 5
        while link.reconnects == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert link.reconnects == 1
        device = FakeDevice(tmp_path / "device")  # restarted on the same link path
        await asyncio.sleep(0.6)  # longer than the capped reopen backoff
        os.write(host, b"hello again")
        assert await _read_until(device.master, 11) == b"hello again"
    finally:
        os.close(host)
        await link.close()
        device.close()


async def test_proxy_damages_bytes_at_the_set_rate(tmp_path: Path) -> None:
    device = FakeDevice(tmp_path / "device")
    noisy = NoiseSettings(corrupt_rate=0.01)
    link = NoisyLink(str(tmp_path / "device"), str(tmp_path / "host"), noisy, noisy, seed=11)
    await link.start()
    host = os.open(tmp_path / "host", os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    tty.setraw(host)
    try:
        payload = bytes(50_000)
        writer = asyncio.create_task(_write_all(host, payload))
        got = await _read_until(device.master, len(payload))
        await writer
        assert len(got) == len(payload)
        flipped = sum(1 for b in got if b)
        stats = link.stats()["to_device"]
        assert flipped == stats["corrupted"]  # type: ignore[index]
        assert 250 < flipped < 750  # 1 % of 50,000, binomial spread far inside this
    finally:
        os.close(host)
        await link.close()
        device.close()
