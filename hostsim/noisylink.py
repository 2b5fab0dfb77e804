"""A noisy serial line between a host and a device, built from two ptys.

The device serves on its own pty (its link path). This proxy opens that
path as a host would, creates a second pty whose symlink the real host
opens instead, and copies bytes both ways through a seeded Noise model:
bit flips, lost bytes, lost bursts, latency. Order is kept, as on a real
wire. If the device goes away (killed, restarted), the proxy reopens its
link path with a capped backoff, like a cable plugged back in.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import time
import tty
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from hostsim.noise import Noise, NoiseSettings

READ_SIZE = 65536
REOPEN_MIN = 0.02
REOPEN_MAX = 0.5


@dataclass
class _Pipe:
    """One direction: damaged chunks wait in `queue` until due, then go out in order."""

    noise: Noise
    pending: bytearray
    queue: deque[tuple[float, bytes]] = field(default_factory=deque)
    release_at: float = 0.0
    timer: asyncio.TimerHandle | None = None


class NoisyLink:
    def __init__(
        self,
        upstream: str,
        link: str,
        to_device: NoiseSettings,
        to_host: NoiseSettings,
        seed: int = 0,
    ) -> None:
        self.upstream = upstream
        self.link = link
        self.to_device = _Pipe(Noise(to_device, seed), bytearray())
        self.to_host = _Pipe(Noise(to_host, seed + 1), bytearray())
        self.reconnects = 0
        self._device_fd: int | None = None
        self._master: int | None = None
        self._slave: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = asyncio.Event()

    def stats(self) -> dict[str, object]:
        return {
            "to_device": self.to_device.noise.stats.as_dict(),
            "to_host": self.to_host.noise.stats.as_dict(),
            "reconnects": self.reconnects,
        }

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        # Holding the slave open keeps the master readable when the host
        # closes its side (otherwise reads fail with EIO until it reopens).
        tmp = f"{self.link}.tmp{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(os.ttyname(slave), tmp)
        os.replace(tmp, self.link)
        self._loop.add_reader(master, self._on_host_readable)
        await self._open_device()

    async def _open_device(self) -> None:
        delay = REOPEN_MIN
        while not self._closed.is_set():
            try:
                fd = os.open(self.upstream, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            except OSError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, REOPEN_MAX)
                continue
            tty.setraw(fd)
            self._device_fd = fd
            assert self._loop is not None
            self._loop.add_reader(fd, self._on_device_readable)
            return

    def _drop_device(self) -> None:
        fd, self._device_fd = self._device_fd, None
        if fd is None:
            return
        assert self._loop is not None
        self._loop.remove_reader(fd)
        with contextlib.suppress(OSError):
            self._loop.remove_writer(fd)
        os.close(fd)
        self.to_device.pending.clear()
        self.reconnects += 1
        if not self._closed.is_set():
            self._loop.create_task(self._open_device())

    def _on_host_readable(self) -> None:
        assert self._master is not None
        try:
            data = os.read(self._master, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno == errno.EIO:
                return
            raise
        self._forward(self.to_device, data, lambda: self._device_fd)

    def _on_device_readable(self) -> None:
        if self._device_fd is None:
            return
        try:
            data = os.read(self._device_fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            self._drop_device()
            return
        if not data:
            self._drop_device()
            return
        self._forward(self.to_host, data, lambda: self._master)

    def _forward(self, pipe: _Pipe, data: bytes, dst: Callable[[], int | None]) -> None:
        damaged = pipe.noise.apply(data)
        if not damaged:
            return
        now = time.monotonic()
        # Never earlier than the chunk before: a wire delays, it does not reorder.
        pipe.release_at = max(now + pipe.noise.delay(), pipe.release_at)
        pipe.queue.append((pipe.release_at, damaged))
        self._schedule(pipe, dst)

    def _schedule(self, pipe: _Pipe, dst: Callable[[], int | None]) -> None:
        if pipe.timer is None and pipe.queue:
            assert self._loop is not None
            wait = max(0.0, pipe.queue[0][0] - time.monotonic())
            pipe.timer = self._loop.call_later(wait, self._release, pipe, dst)

    def _release(self, pipe: _Pipe, dst: Callable[[], int | None]) -> None:
        pipe.timer = None
        now = time.monotonic()
        while pipe.queue and pipe.queue[0][0] <= now:
            pipe.pending += pipe.queue.popleft()[1]
        self._flush(pipe, dst)
        self._schedule(pipe, dst)

    def _flush(self, pipe: _Pipe, dst: Callable[[], int | None]) -> None:
        fd = dst()
        assert self._loop is not None
        if fd is None:
            pipe.pending.clear()  # nobody on the other end: the bytes fall on the floor
            return
        try:
            written = os.write(fd, pipe.pending)
        except BlockingIOError:
            written = 0
        except OSError:
            pipe.pending.clear()
            if fd == self._device_fd:
                self._drop_device()
            return
        del pipe.pending[:written]
        if pipe.pending:
            self._loop.add_writer(fd, self._on_writable, pipe, dst, fd)

    def _on_writable(self, pipe: _Pipe, dst: Callable[[], int | None], fd: int) -> None:
        assert self._loop is not None
        self._loop.remove_writer(fd)
        self._flush(pipe, dst)

    async def close(self) -> None:
        self._closed.set()
        for pipe in (self.to_device, self.to_host):
            if pipe.timer is not None:
                pipe.timer.cancel()
        loop = self._loop
        for fd in (self._master, self._device_fd):
            if fd is not None and loop is not None:
                loop.remove_reader(fd)
                with contextlib.suppress(OSError):
                    loop.remove_writer(fd)
        for fd in (self._master, self._slave, self._device_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = self._device_fd = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.link)
