"""HOST:PORT as the command lines and config files write it ([::1]:8700 for IPv6)."""

from __future__ import annotations

from device.protocol.untrusted import shown


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    # at most 5 digits before int(): a port of 100,000 digits is no port, and int() of it
    # would answer with its own, differently worded error
    if (
        not sep
        or not host
        or not (port.isascii() and port.isdigit() and len(port) <= 5)
        or (int(port) > 65535)
    ):
        raise ValueError(f"must be HOST:PORT with a port from 0 to 65535, got {shown(text)}")
    return host, int(port)
