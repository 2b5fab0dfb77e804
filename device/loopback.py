"""loop://: an in-memory port pair, a host and a printer in one process.

What one end writes the other reads, in order and whole, within the same event loop:
pyserial's loop://, python-can's virtual bus or pymodbus's NullModem, but a pair, so the
far end can be a DeviceServer (the same code as over a pty) or a test playing the device.
Closing either end is a cable pulled: both ends read b"" from then on.

Nothing here needs a running loop until someone reads. The buffer is not bounded: both
ends are this process's own code, and each side reads continuously.
"""

from __future__ import annotations

import asyncio
from collections import deque


class MemoryPort:
    """One end of a pair made by `memory_pair`; a `device.transport.Port`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.peer: MemoryPort | None = None
        self._chunks: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False  # this end, or the other, was closed

    @property
    def closed(self) -> bool:
        return self._eof

    async def read(self) -> bytes:
        while not self._chunks:
            if self._eof:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = b"".join(self._chunks)  # what arrived meanwhile, in one read, like a tty
        self._chunks.clear()
        return data

    def write(self, data: bytes) -> None:
        peer = self.peer
        if self._eof or peer is None or peer._eof or not data:
            return  # nobody at the other end: the bytes go nowhere, as on a dead line
        peer._chunks.append(bytes(data))
        peer._wake()

    def close(self) -> None:
        for end in (self, self.peer):
            if end is not None and not end._eof:
                end._eof = True
                end._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


def memory_pair(name: str = "loop://") -> tuple[MemoryPort, MemoryPort]:
    """Two connected ends: (host, device)."""
    host, device = MemoryPort(name), MemoryPort(f"{name} (device end)")
    host.peer, device.peer = device, host
    return host, device
