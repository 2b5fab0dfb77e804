"""The noisy line as a Port wrapper, in-process: `NoisyPort(port, to_device, to_host)`.

Like pyserial's spy:// wraps a port to watch it, this wraps a host's port to damage it:
what the host writes goes through one seeded Noise model on its way to the device, what
it reads comes through another. The same model as the pty proxy (noisylink.py), for a
Printer or a DeviceClient in one process, e.g. over loop://:

    Printer.open("loop://", wrap_port=lambda port: NoisyPort(port, settings, seed=7))

Order is kept, as on a wire: a delayed chunk holds back the ones after it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from device.transport import Port
from hostsim.noise import Noise, NoiseSettings


class NoisyPort:
    """`inner` seen through a bad line. `to_host` defaults to the same settings as
    `to_device`; the two directions draw from seeds `seed` and `seed + 1`."""

    def __init__(
        self,
        inner: Port,
        to_device: NoiseSettings,
        to_host: NoiseSettings | None = None,
        *,
        seed: int = 0,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.to_device = Noise(to_device, seed)
        self.to_host = Noise(to_host if to_host is not None else to_device, seed + 1)
        self._queue: deque[tuple[float, bytes]] = deque()  # delayed writes, due time first
        self._release_at = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._read_at = 0.0

    def stats(self) -> dict[str, dict[str, int]]:
        return {
            "to_device": self.to_device.stats.as_dict(),
            "to_host": self.to_host.stats.as_dict(),
        }

    async def read(self) -> bytes:
        while True:
            data = await self.inner.read()
            if not data:
                return b""
            damaged = self.to_host.apply(data)
            delay = self.to_host.delay()
            if delay:
                # Never before the chunk read earlier: a line delays, it does not reorder.
                self._read_at = max(time.monotonic() + delay, self._read_at)
                await asyncio.sleep(max(0.0, self._read_at - time.monotonic()))
            if damaged:
                return damaged

    def write(self, data: bytes) -> None:
        damaged = self.to_device.apply(data)
        if not damaged:
            return
        delay = self.to_device.delay()
        if not delay and not self._queue:
            self.inner.write(damaged)
            return
        self._release_at = max(time.monotonic() + delay, self._release_at)
        self._queue.append((self._release_at, damaged))
        self._schedule()

    def _schedule(self) -> None:
        if self._timer is None and self._queue:
            wait = max(0.0, self._queue[0][0] - time.monotonic())
            self._timer = asyncio.get_running_loop().call_later(wait, self._release)

    def _release(self) -> None:
        self._timer = None
        now = time.monotonic()
        while self._queue and self._queue[0][0] <= now:
            self.inner.write(self._queue.popleft()[1])
        self._schedule()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue.clear()
        self.inner.close()
