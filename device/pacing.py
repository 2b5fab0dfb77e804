"""Line-rate arithmetic of a UART, for ports that emulate one (a paced pty).

A UART sends each byte as a start bit, the data bits, an optional parity
bit and the stop bits: 8N1 is 10 bits a byte, 8E1 and 8N2 are 11. A line
of `baud` bits per second therefore carries baud / bits-per-byte bytes per
second, and bytes handed to it while it is still sending wait their turn.
No I/O here and no clock of its own: the caller says what time it is.
"""

from __future__ import annotations

START_BITS = 1
DATA_BITS = 8  # the protocol is binary: every port runs 8 data bits


def bits_per_byte(parity: str = "N", stopbits: float = 1, databits: int = DATA_BITS) -> float:
    """Bits on the wire for one byte: start + data + parity (unless N) + stop."""
    parity_bits = 0 if parity.upper() == "N" else 1
    return START_BITS + databits + parity_bits + stopbits


def bytes_per_second(baud: int, parity: str = "N", stopbits: float = 1) -> float:
    return baud / bits_per_byte(parity, stopbits)


def wire_seconds(size: int, baud: int, parity: str = "N", stopbits: float = 1) -> float:
    """How long `size` bytes take on the wire, back to back."""
    return size / bytes_per_second(baud, parity, stopbits)


class Pacer:
    """When the line is free again: bytes handed over while it sends queue behind.

    `send(n, now)` records n bytes handed to the line at `now` and answers how many
    seconds from `now` until their last bit is out. An idle line starts at once; a busy
    one starts when the bytes before are out (a line does not save up idle time)."""

    def __init__(self, rate: float) -> None:
        if not rate > 0:
            raise ValueError(f"a line rate is more than 0 bytes/s, got {rate}")
        self.rate = rate
        self._free_at = float("-inf")

    def send(self, size: int, now: float, catch_up: float = 0.0) -> float:
        """`catch_up`: for bytes that were waiting all along (the same burst), up to that
        many seconds the sender is late count as line time already spent, as a UART fed
        from a FIFO would not have paused: a busy host must not slow the line down."""
        start = max(now - catch_up, self._free_at)
        self._free_at = start + size / self.rate
        return self._free_at - now

    def busy_for(self, now: float) -> float:
        """Seconds until everything handed over so far is out (0 on an idle line)."""
        return max(0.0, self._free_at - now)
