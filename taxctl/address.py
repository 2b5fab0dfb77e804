"""HOST:PORT as the command lines and config files write it ([::1]:8700 for IPv6)."""

from __future__ import annotations


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"must be HOST:PORT with a port from 0 to 65535, got {text!r}")
    return host, int(port)
