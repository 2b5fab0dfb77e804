"""An emulated printer on the far end of an in-memory port, in this event loop.

The same firmware and DeviceServer as `taxctl device run` over a pty, without a process,
a pty or a state directory to clean up: `Printer.open("loop://")` runs one, and tests and
examples use it directly. The state lives in a temporary directory (gone at `stop`)
unless a `state` path is given, which then keeps the journal across runs.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

from device.app import open_device
from device.firmware import Firmware
from device.limits import Limits
from device.loopback import MemoryPort, memory_pair
from device.protocol.clock import Clock
from device.protocol.commands import DEFAULT_MAX_IN_FLIGHT
from device.server import DeviceServer

STOP_TIMEOUT = 10.0  # seconds for the writer to finish what it accepted


class EmulatedPrinter:
    """A training printer (by default) served on a memory port pair.

    `start()` returns the host's end; `stop()` (or leaving `async with`) finishes every
    accepted write, closes the journal and removes a temporary state directory.
    """

    def __init__(
        self,
        state: Path | None = None,
        *,
        training: bool = True,
        clock: Clock | None = None,
        limits: Limits | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        name: str = "loop://",
    ) -> None:
        self.state = state
        self.name = name
        self._training, self._clock, self._limits = training, clock, limits
        self._max_in_flight = max_in_flight
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._fw: Firmware | None = None
        self._device_port: MemoryPort | None = None
        self._host_port: MemoryPort | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def fw(self) -> Firmware:
        """The running firmware (its journal and counters), for tests and demos."""
        if self._fw is None:
            raise RuntimeError("the emulated printer is not started")
        return self._fw

    @property
    def port(self) -> MemoryPort:
        """The host's end of the line (what `start` returned)."""
        if self._host_port is None:
            raise RuntimeError("the emulated printer is not started")
        return self._host_port

    async def start(self) -> MemoryPort:
        if self._task is not None:
            raise RuntimeError("the emulated printer is already started")
        state = self.state
        if state is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="taxctl-loop-")
            state = Path(self._tmp.name) / "device"
        try:
            self._fw = open_device(
                state, training=self._training, clock=self._clock, limits=self._limits
            )
        except BaseException:
            self._cleanup()
            raise
        host, device = memory_pair(self.name)
        self._host_port, self._device_port = host, device
        server = DeviceServer(self._fw, device, max_in_flight=self._max_in_flight)
        self._task = asyncio.create_task(server.serve(self._stop))
        return host

    async def stop(self) -> None:
        self._stop.set()
        try:
            if self._task is not None:
                await asyncio.wait_for(self._task, STOP_TIMEOUT)
        finally:
            if self._device_port is not None:
                self._device_port.close()
            self._cleanup()

    def _cleanup(self) -> None:
        if self._fw is not None and not self._closed:
            self._closed = True  # the firmware stays readable (head, counters) after this
            self._fw.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
