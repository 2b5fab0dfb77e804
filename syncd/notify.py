"""sd_notify(3) without libsystemd: datagrams to $NOTIFY_SOCKET.

The protocol is one AF_UNIX datagram per message, newline-separated
`KEY=value` assignments. The socket path may be a filesystem path or, when
it starts with '@', an abstract socket (the '@' becomes a NUL byte). With
no NOTIFY_SOCKET (not started by systemd) every call does nothing.

The watchdog interval comes from WATCHDOG_USEC (and WATCHDOG_PID, which
must be ours if set); systemd expects a ping well inside it, so we ping at
half the interval.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("taxctl.syncd")


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = _address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval = _watchdog(env)
        self._sock: socket.socket | None = None
        self._last_status: str | None = None

    def send(self, **fields: str | int) -> bool:
        """Send one message; True if it was delivered to the socket."""
        if self.address is None:
            return False
        message = "\n".join(f"{key.upper()}={value}" for key, value in fields.items())
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode(), self.address)
        except OSError as exc:
            log.warning("sd_notify %s failed: %s", message.replace("\n", " "), exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        if status is None:
            return self.send(ready=1)
        self._last_status = status
        return self.send(ready=1, status=status)

    def status(self, text: str) -> bool:
        """STATUS=; repeated identical texts are sent once."""
        if text == self._last_status:
            return False
        self._last_status = text
        return self.send(status=text)

    def watchdog(self) -> bool:
        return self.send(watchdog=1)

    def stopping(self, status: str | None = None) -> bool:
        if status is None:
            return self.send(stopping=1)
        return self.send(stopping=1, status=status)

    def reloading(self) -> bool:
        """RELOADING=1, with the MONOTONIC_USEC= that systemd's Type=notify-reload wants."""
        return self.send(reloading=1, monotonic_usec=time.monotonic_ns() // 1000)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


def _address(raw: str) -> str | bytes | None:
    if not raw:
        return None
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    return None  # systemd only ever hands out absolute or abstract addresses


def _watchdog(env: Mapping[str, str]) -> float | None:
    """Seconds between pings (half of WATCHDOG_USEC), or None if no watchdog for us."""
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 1_000_000 / 2


def status_line(devices: int, online: int, pending: int, chain: str, rejected: int = 0) -> str:
    """The one-line STATUS=, e.g. '2 devices, 1,234 pending, chain ok'."""
    noun = "device" if devices == 1 else "devices"
    parts = [f"{devices} {noun}" + ("" if online == devices else f" ({online} online)")]
    parts.append(f"{pending:,} pending")
    if rejected:
        parts.append(f"{rejected:,} rejected")
    parts.append(f"chain {chain}")
    return ", ".join(parts)
