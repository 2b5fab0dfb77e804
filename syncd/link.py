"""One serial link per device: open, handshake, watch, reopen.

A link task keeps a `DeviceClient` on its port for as long as the port
works. It opens the port (retrying with capped backoff while it is absent,
busy or forbidden), handshakes (HELLO, INFO, STATUS), reports the device
online, sends a STATUS heartbeat every `status_interval`, and when the
port disappears or stops answering it reports the device offline, closes
the client and starts over — an unplugged and replugged printer comes back
without restarting the daemon.

Other parts (the POS API, the sync engine) use `link.require()` while the
link is online; a `LinkError` from a request means its outcome is unknown
and the request must be sent again with the same request id. The client
tells the link of every such failure, so the link checks itself at once
rather than at the next heartbeat, whoever made the request.

The link owns what syncd knows of the printer: typed snapshots of its INFO
and STATUS (`device_answers.DeviceInfo`/`DeviceStatus`), replaced only here,
through the intent methods below (counters learned, consortium adopted,
segment loaded, INFO asked again), and read by everything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from typing import Any

from device import transport
from device.client import DeviceClient, LinkError
from device.pacing import bytes_per_second
from device.protocol.status import DeviceError
from device.transport import PortError
from syncd import device_answers
from syncd.backoff import Backoff
from syncd.config import Config, DeviceConfig, default
from syncd.device_answers import DeviceInfo, DeviceStatus
from syncd.metrics import SyncdMetrics
from syncd.waiting import until

log = logging.getLogger("taxctl.syncd")

WATCH_TICK = 0.1
# Of a line that really runs at its baud rate, the share a heartbeat may take: a STATUS
# answer is about 470 bytes, half a second at 9600 baud.
HEARTBEAT_SHARE = 0.02
STATUS_ANSWER_BYTES = 480


class LinkState(StrEnum):
    OFFLINE = "offline"  # no port, or the port does not answer
    CONNECTING = "connecting"  # port open, handshake under way
    ONLINE = "online"


class LinkDown(ConnectionError):
    """The device is not reachable now; nothing was sent."""


@dataclass(frozen=True)
class LinkSettings:
    """The `link.*` options (syncd/config.py declares them and their defaults)."""

    response_timeout: float = default("link.response_timeout")
    max_retries: int = default("link.max_retries")
    max_in_flight: int = default("link.max_in_flight")
    reopen_max: float = default("link.reopen_max")
    status_interval: float = default("link.status_interval")

    @classmethod
    def of(cls, cfg: Config) -> LinkSettings:
        return cls(**cfg.section("link", (f.name for f in fields(cls))))


class DeviceLink:
    def __init__(
        self,
        device: DeviceConfig,
        settings: LinkSettings,
        metrics: SyncdMetrics | None = None,
        *,
        opener: Callable[..., Any] = DeviceClient.open,
    ) -> None:
        self.config = device
        self.settings = settings
        self.metrics = metrics
        self._open = opener
        self.state = LinkState.OFFLINE
        self.client: DeviceClient | None = None
        self.device_id: str | None = None
        self._info: DeviceInfo | None = None
        self._status: DeviceStatus | None = None
        self.status_at: float | None = None
        self.last_error: str | None = None
        self.connections = 0
        self.online_since: float | None = None
        self._online = asyncio.Event()
        self._lost = asyncio.Event()
        self._listeners: list[Callable[[DeviceLink], None]] = []
        self._stats_seen: dict[str, int] = {}
        self._line_rate: float | None = None
        self._line_known = False
        if metrics is not None:
            metrics.configured(device.name, device.port)

    # --- for users of the link ----------------------------------------------------------

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def online(self) -> bool:
        return self.state == LinkState.ONLINE and self.client is not None

    def require(self) -> DeviceClient:
        if self.state != LinkState.ONLINE or self.client is None or self.client.closed:
            reason = f": {self.last_error}" if self.last_error else ""
            raise LinkDown(f"printer {self.name} is not connected{reason}")
        return self.client

    async def wait_online(self, timeout: float | None = None) -> bool:
        return await until(self._online, timeout=timeout)

    @property
    def came_online(self) -> asyncio.Event:
        """Set while the link is online (to wait on, with `waiting.until`)."""
        return self._online

    def on_change(self, listener: Callable[[DeviceLink], None]) -> None:
        self._listeners.append(listener)

    def mark_suspect(self, reason: str) -> None:
        """A request ran out of retransmissions, or an answer was not what the protocol
        defines: check the link now rather than at the next heartbeat."""
        if self.state == LinkState.ONLINE:
            log.warning("%s: %s; checking the link", self.label, reason)
            self._lost.set()

    @property
    def line_rate(self) -> float | None:
        """Bytes/s of the line if it is a physical one (a serial port, or a pty paced like
        one); None for an unpaced pty (the emulator's link) or a loop:// pair, which move
        bytes at memory speed whatever their nominal baud. Looked at again at each connection."""
        if not self._line_known:
            cfg = self.config
            memory = transport.at_memory_speed(cfg.port, pace=cfg.pace)
            self._line_rate = (
                None if memory else bytes_per_second(cfg.baud, cfg.parity, cfg.stopbits)
            )
            self._line_known = True
        return self._line_rate

    def heartbeat_interval(self) -> float:
        rate = self.line_rate
        floor = STATUS_ANSWER_BYTES / (rate * HEARTBEAT_SHARE) if rate else 0.0
        return max(self.settings.status_interval, floor)

    @property
    def label(self) -> str:
        return f"{self.device_id or '?'} on {self.config.port}"

    @property
    def info(self) -> DeviceInfo | None:
        """The printer's INFO as of the handshake (and the changes made through the link)."""
        return self._info

    @property
    def status(self) -> DeviceStatus | None:
        """The last STATUS, with the counters learned since."""
        return self._status

    @property
    def synced_through(self) -> int:
        """The highest counter the device holds a chain receipt for, as far as syncd knows:
        the one place syncd keeps it (the cursor and the metrics copy it from here)."""
        return self._status.synced_through if self._status is not None else 0

    def note_counters(self, counter: int, synced_through: int) -> int:
        """Counters learned from FETCH/ACK_SYNC, between heartbeats; how far synced_through
        moved."""
        if self._status is None:
            return 0
        before = self._status.synced_through
        self._set_status(self._status.with_counters(counter, synced_through), heard=False)
        return self._status.synced_through - before

    def note_numbers_left(self, numbers_left: int) -> None:
        """A segment was loaded: the device said how many numbers it has now (until the next
        STATUS says)."""
        if self._status is not None and numbers_left >= 0:
            self._set_status(replace(self._status, numbers_left=numbers_left), heard=False)

    def adopt_consortium(self, raw: bytes) -> None:
        """The device accepted this node list (ACK_SYNC with an offer)."""
        if self._info is not None:
            self._info = self._info.with_consortium(raw)

    def segment_loaded(self, raw: bytes, numbers_left: object) -> None:
        """The device took a new number segment (LOAD_SEGMENT)."""
        if self._info is not None:
            self._info = self._info.with_segment(raw)
        if type(numbers_left) is int:
            self.note_numbers_left(numbers_left)

    async def refresh_info(self) -> DeviceInfo:
        """Ask the device for INFO again and keep it, checked like the handshake's: an
        answer that is not what the protocol defines changes nothing (BadDeviceAnswer)."""
        try:
            info = device_answers.device_info(await self.require().info())
        except device_answers.BadDeviceAnswer as exc:
            self.mark_suspect(str(exc))
            raise
        self._info = info
        return info

    def _client_failed(self, exc: LinkError) -> None:
        self.mark_suspect(f"a request failed: {exc}")

    # --- the task ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        backoff = Backoff(min(0.05, self.settings.reopen_max), self.settings.reopen_max)
        while not stop.is_set():
            client = await self._connect()
            if client is None:
                await until(stop, timeout=backoff.next_delay())
                continue
            backoff.reset()
            try:
                await self._watch(client, stop)
            finally:
                await self._drop(client)

    async def _connect(self) -> DeviceClient | None:
        cfg, s = self.config, self.settings
        try:
            client: DeviceClient = await self._open(
                cfg.port,
                baud=cfg.baud,
                parity=cfg.parity,
                stopbits=cfg.stopbits,
                rtscts=cfg.rtscts,
                response_timeout=s.response_timeout,
                max_retries=s.max_retries,
                max_in_flight=s.max_in_flight,
                on_link_error=self._client_failed,
                # only when asked, so that openers written before pacing keep working
                **({"pace": True} if cfg.pace else {}),
            )
        except (PortError, OSError) as exc:
            self._set_error(str(exc))
            return None
        self.state = LinkState.CONNECTING
        self.client = client
        self._line_known = False  # the port path may lead elsewhere now
        try:
            device_answers.hello_answer(await client.hello())
            info = device_answers.device_info(await client.info())
            status = device_answers.device_status(await client.status())
        except (LinkError, DeviceError) as exc:
            self._set_error(f"handshake failed: {exc}")
            await self._drop(client)
            return None
        self._went_online(info, status)
        return client

    def _went_online(self, info: DeviceInfo, status: DeviceStatus) -> None:
        """A handshake succeeded: the link is online with this device, and says so."""
        previous = self.device_id
        self._info = info
        self.device_id = info.device_id
        self._stats_seen = {}
        if previous is not None and previous != self.device_id:
            log.warning(
                "port %s now has device %s (was %s)", self.config.port, self.device_id, previous
            )
        self._set_status(status, new=True)
        self.connections += 1
        self.last_error = None
        self.online_since = time.time()
        self.state = LinkState.ONLINE
        self._lost.clear()
        self._online.set()
        if self.metrics is not None:
            self.metrics.identified(self.name, self.device_id)
            self.metrics.link_up.set(1, self.device_id, self.config.port)
            if self.connections > 1:
                self.metrics.link_reconnects.inc(1, self.device_id)
        log.info(
            "device %s online on %s: %s, counter %d, synced through %d, %s",
            self.device_id,
            self.config.port,
            "training" if info.training else "production",
            status.counter,
            status.synced_through,
            "can issue" if status.can_issue else "blocked: " + ", ".join(status.blocking),
        )
        self._notify()

    async def _watch(self, client: DeviceClient, stop: asyncio.Event) -> None:
        next_beat = time.monotonic() + self.heartbeat_interval()
        while not stop.is_set():
            if client.closed:
                self._set_error("port closed (unplugged?)")
                return
            if self._lost.is_set() or time.monotonic() >= next_beat:
                self._lost.clear()
                try:
                    self._set_status(device_answers.device_status(await client.status()))
                except device_answers.BadDeviceAnswer as exc:
                    self._set_error(str(exc))
                    return
                except LinkError as exc:
                    self._set_error(f"no answer: {exc}")
                    return
                except DeviceError as exc:
                    log.warning("%s: STATUS refused: %s", self.label, exc)
                next_beat = time.monotonic() + self.heartbeat_interval()
            self._export_stats(client)
            await until(stop, timeout=WATCH_TICK)

    async def _drop(self, client: DeviceClient) -> None:
        was_online = self.state == LinkState.ONLINE
        self._export_stats(client)
        self.state = LinkState.OFFLINE
        self._online.clear()
        self.online_since = None
        if self.client is client:
            self.client = None
        with contextlib.suppress(Exception):
            await client.close()
        if was_online:
            if self.metrics is not None and self.device_id is not None:
                self.metrics.link_up.set(0, self.device_id, self.config.port)
            log.warning("device %s offline: %s", self.label, self.last_error or "link closed")
            self._notify()

    async def close(self) -> None:
        if self.client is not None:
            await self._drop(self.client)

    # --- bookkeeping ------------------------------------------------------------------------

    def _set_error(self, text: str) -> None:
        if text != self.last_error:
            level = logging.WARNING if self.connections else logging.ERROR
            log.log(level, "port %s: %s", self.config.port, text)
        self.last_error = text

    def _set_status(self, status: DeviceStatus, *, heard: bool = True, new: bool = False) -> None:
        """Keep a STATUS (`heard`) or counters learned otherwise. Within one connection each
        step of synced_through is counted as documents synced, whoever saw it first."""
        previous = self._status
        self._status = status
        if heard:
            self.status_at = time.time()
        moved = 0 if new or previous is None else status.synced_through - previous.synced_through
        if moved > 0 and self.metrics is not None and self.device_id is not None:
            self.metrics.synced_total.inc(moved, self.device_id)
        self._export_status()

    def _export_status(self) -> None:
        m, status, device = self.metrics, self._status, self.device_id
        if m is None or status is None or device is None:
            return
        m.issued_through.set(status.counter, device)
        m.synced_through.set(status.synced_through, device)
        m.pending.set(status.pending, device)
        m.numbers_left.set(status.numbers_left, device)
        m.can_issue.set(1 if status.can_issue else 0, device)

    def _export_stats(self, client: DeviceClient) -> None:
        if self.metrics is None or self.device_id is None:
            return
        for event, value in client.stats.as_dict().items():
            if event in ("requests", "responses"):
                continue
            delta = value - self._stats_seen.get(event, 0)
            if delta > 0:
                self.metrics.link_events.inc(delta, self.device_id, event)
            self._stats_seen[event] = value

    def _notify(self) -> None:
        for listener in self._listeners:
            try:
                listener(self)
            except Exception:  # a listener's bug must not take the link down
                log.exception("link listener failed")

    def describe(self) -> dict[str, Any]:
        status = self._status
        return {
            "name": self.name,
            "port": self.config.port,
            "device_id": self.device_id,
            "state": self.state.value,
            "error": self.last_error,
            "training": self._info.training if self._info else None,
            "counter": status.counter if status else None,
            "synced_through": status.synced_through if status else None,
            "pending": status.pending if status else None,
            "can_issue": status.can_issue if status else None,
            "blocking": list(status.blocking) if status else None,
            "numbers_left": status.numbers_left if status else None,
            "offline_since": status.offline_since if status else None,
            "last_sync_at": status.last_sync_at if status else None,
            "status_at": self.status_at,
            "link_stats": self.client.stats.as_dict() if self.client else None,
        }
