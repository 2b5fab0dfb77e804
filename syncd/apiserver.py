"""The POS API's listening sockets: a connection cap, a header deadline, quiet accept errors.

aiohttp's sites serve through `loop.create_server`, whose accept loop takes
every connection the kernel has queued and, when the process is out of file
descriptors (EMFILE), logs a traceback per failed accept() and schedules one
more retry per failure — hundreds of log lines a second while the serial
ports cannot be reopened for want of a descriptor. So syncd accepts itself:

- each accepted socket is counted at once. At `max_connections`, the
  connection that has waited longest for a request head is closed to make
  room (a till sends its request as soon as it connects, so it is never the
  one waiting longest; a slow client is); when every connection is busy with
  a request, the new one gets a short 503 (TOO_MANY_CONNECTIONS) and is
  closed in the same call. At most OVERSHOOT descriptors above the cap are
  in use, for the moment a closed socket takes to be released;
- a connection that has not delivered a complete request head within
  `header_timeout` of connecting (or of its previous answer) is cut off;
- an accept() error pauses accepting for a second and is logged at most once
  per `LOG_EVERY` seconds, with a count.

The HTTP itself stays aiohttp's: every accepted socket is handed to the
runner's protocol factory through `loop.connect_accepted_socket`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syncd.refusals import ApiCode, for_code

log = logging.getLogger("taxctl.syncd.api")

ACCEPT_BATCH = 64  # accepts per readiness event, so that a flood cannot starve the loop
ACCEPT_PAUSE = 1.0  # seconds without accepting after an accept() error
LOG_EVERY = 10.0  # seconds between two log lines about the same condition
EVICTING = 8  # connections closed to make room whose sockets may not be released yet
OVERSHOOT = EVICTING + 1  # descriptors above the cap: those, and one being refused


class LogThrottle:
    """One log line per `interval` per key; the next line says how many were held back."""

    def __init__(self, logger: logging.Logger, interval: float = LOG_EVERY) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def admit(self, key: str) -> int | None:
        """None while `key` is held back; else how many were held back since its last line."""
        now = time.monotonic()
        if now - self._last.get(key, -math.inf) < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)

    def __call__(self, key: str, level: int, message: str, *args: Any) -> None:
        held = self.admit(key)
        if held is None:
            return
        if held:
            message += f" (and {held} more in the last {self.interval:g} s)"
        self.logger.log(level, message, *args)


def loop_exception_handler(throttle: LogThrottle) -> Callable[[Any, dict[str, Any]], None]:
    """asyncio's exception handler, at most one report per message per interval."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", "unhandled exception"))[:200]
        held = throttle.admit(message)
        if held is None:
            return
        if held:
            context = {**context, "message": f"{message} (and {held} more like it)"}
        loop.default_exception_handler(context)

    return handle


def _refusal_bytes() -> bytes:
    refusal = for_code(ApiCode.TOO_MANY_CONNECTIONS)
    body = json.dumps(
        {"error": ApiCode.TOO_MANY_CONNECTIONS.value, "message": refusal.message}
    ).encode()
    head = (
        f"HTTP/1.1 {refusal.http} Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: {refusal.retry_after}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


REFUSAL = _refusal_bytes()


@dataclass
class GateSettings:
    max_connections: int
    header_timeout: float


class ConnectionGate:
    """Accepts POS API connections for an HTTP protocol factory, within the settings."""

    def __init__(
        self, factory: Callable[[], asyncio.Protocol], settings: GateSettings, backlog: int = 128
    ) -> None:
        self.factory = factory
        self.settings = settings
        self.backlog = backlog
        self.open = 0  # accepted and not yet closed, counted from accept() on
        self.refused = 0
        self.evicted = 0
        self.timed_out = 0
        self.waiting: dict[_Counted, None] = {}  # waiting for a request head, oldest first
        self.accept_errors = 0
        self.live: dict[asyncio.BaseTransport, _Counted] = {}
        self._sockets: list[socket.socket] = []
        self._paused: set[socket.socket] = set()
        self.throttle = LogThrottle(log)
        self.loop = asyncio.get_running_loop()

    # --- listening -------------------------------------------------------------------------

    def listen_tcp(self, host: str, port: int) -> int:
        """Bind every address `host` names, as asyncio's create_server does, and start
        accepting; returns the port (port 0: the one the system chose, the same for all)."""
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        unique = list(dict.fromkeys((family, address) for family, _, _, _, address in infos))
        for family, address in unique:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((address[0], port, *address[2:]))
            except OSError:
                sock.close()
                self.close()
                raise
            self._start(sock)
            port = int(sock.getsockname()[1])
        return port

    def listen_unix(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if path.is_socket():
                path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # bind() makes the socket with the process umask: under 0o117 nobody but the owner
        # and the group can connect even before the chmod, which then makes it exactly 0660
        old_umask = os.umask(0o117)
        try:
            sock.bind(str(path))
            os.chmod(path, 0o660)
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old_umask)
        self._start(sock)

    def _start(self, sock: socket.socket) -> None:
        sock.listen(self.backlog)
        sock.setblocking(False)
        self._sockets.append(sock)
        self.loop.add_reader(sock.fileno(), self._accept, sock)

    def close(self) -> None:
        """Stop accepting (open connections are the runner's to close)."""
        for sock in self._sockets:
            if sock not in self._paused:
                self.loop.remove_reader(sock.fileno())
            sock.close()
        self._sockets.clear()

    # --- accepting -------------------------------------------------------------------------

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS, ENOMEM: wait, do not spin
                self.accept_errors += 1
                self.throttle(
                    "accept",
                    logging.ERROR,
                    "POS API: cannot accept a connection (%s); pausing %g s",
                    exc.strerror or exc,
                    ACCEPT_PAUSE,
                )
                self._pause(sock)
                return
            if self.open >= self.settings.max_connections and not self._make_room():
                self._refuse(conn)
                continue
            self.open += 1
            conn.setblocking(False)
            self.loop.create_task(self._connect(conn))

    def _make_room(self) -> bool:
        """Close the connection that has waited longest for a request head, if any."""
        if not self.waiting or self.open >= self.settings.max_connections + EVICTING:
            return False
        oldest = next(iter(self.waiting))
        self.evicted += 1
        self.throttle(
            "evicted",
            logging.WARNING,
            "POS API: %d connections open, the most allowed; closing the ones waiting longest "
            "for a request (%d so far)",
            self.open,
            self.evicted,
        )
        oldest.abort()
        return True

    def _pause(self, sock: socket.socket) -> None:
        self.loop.remove_reader(sock.fileno())
        self._paused.add(sock)
        self.loop.call_later(ACCEPT_PAUSE, self._resume, sock)

    def _resume(self, sock: socket.socket) -> None:
        self._paused.discard(sock)
        if sock in self._sockets:
            self.loop.add_reader(sock.fileno(), self._accept, sock)

    def _refuse(self, conn: socket.socket) -> None:
        """Beyond the cap: say so if the socket takes it at once, and close it now."""
        self.refused += 1
        with contextlib.suppress(OSError):
            conn.setblocking(False)
            conn.send(REFUSAL)
        conn.close()
        self.throttle(
            "refused",
            logging.WARNING,
            "POS API: %d connections open, the most allowed; refusing new ones (%d so far)",
            self.open,
            self.refused,
        )

    async def _connect(self, conn: socket.socket) -> None:
        counted = _Counted(self, self.factory())
        try:
            await self.loop.connect_accepted_socket(lambda: counted, sock=conn)
        except OSError:
            counted.release()
            conn.close()

    # --- the request cycle (called by the API's middleware) ---------------------------------

    def on_request(self, transport: asyncio.BaseTransport | None, started: bool) -> None:
        counted = self.live.get(transport) if transport is not None else None
        if counted is not None:
            counted.request(started)

    def describe(self) -> dict[str, int | float]:
        return {
            "open": self.open,
            "max": self.settings.max_connections,
            "refused": self.refused,
            "evicted": self.evicted,
            "header_timeouts": self.timed_out,
            "accept_errors": self.accept_errors,
        }


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, with the gate's count and head deadline."""

    def __init__(self, gate: ConnectionGate, inner: asyncio.Protocol) -> None:
        self.gate = gate
        self.inner = inner
        self.transport: asyncio.BaseTransport | None = None
        self.busy = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._released = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.gate.live[transport] = self
        self._arm()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.release()
        self.inner.connection_lost(exc)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.gate.open -= 1
            if self.transport is not None:
                self.gate.live.pop(self.transport, None)

    def request(self, started: bool) -> None:
        # between a request's head and the end of its handler the body timeout and the
        # handler's own bounds apply; the head deadline runs whenever none is in progress
        self.busy += 1 if started else -1
        if self.busy > 0:
            self._disarm()
        else:
            self._arm()

    def _arm(self) -> None:
        self._disarm()
        loop = self.gate.loop
        self._deadline = loop.call_later(self.gate.settings.header_timeout, self._expire)
        self.gate.waiting[self] = None

    def _disarm(self) -> None:
        self.gate.waiting.pop(self, None)
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def abort(self) -> None:
        """Close at once: nothing to flush for a client that has not asked anything yet."""
        self._disarm()
        if isinstance(self.transport, asyncio.Transport):
            self.transport.abort()
        elif self.transport is not None:
            self.transport.close()

    def _expire(self) -> None:
        self._deadline = None
        gate = self.gate
        gate.timed_out += 1
        gate.throttle(
            "head",
            logging.INFO,
            "POS API: closed a connection that sent no complete request in %g s (%d so far)",
            gate.settings.header_timeout,
            gate.timed_out,
        )
        self.abort()
