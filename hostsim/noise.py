"""A seeded model of a bad serial line: what happens to each chunk of bytes.

Pure: it takes bytes and returns bytes, keeping counts, so the same seed
damages the same bytes every run and tests can check the arithmetic. The
proxy in noisylink.py applies it to a live pty pair.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class NoiseSettings:
    corrupt_rate: float = 0.0  # probability that a byte has one bit flipped
    drop_rate: float = 0.0  # probability that a byte is lost
    burst_rate: float = 0.0  # probability per chunk of losing a run of bytes
    burst_max: int = 64
    delay_max: float = 0.0  # seconds; each chunk waits uniformly in [0, delay_max]

    def __post_init__(self) -> None:
        for name in ("corrupt_rate", "drop_rate", "burst_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")
        if self.burst_max < 1 or self.delay_max < 0:
            raise ValueError("burst_max must be >= 1 and delay_max >= 0")

    @property
    def quiet(self) -> bool:
        return not (self.corrupt_rate or self.drop_rate or self.burst_rate or self.delay_max)


@dataclass
class NoiseStats:
    chunks: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    corrupted: int = 0
    dropped: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "chunks": self.chunks,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "corrupted": self.corrupted,
            "dropped": self.dropped,
        }


@dataclass
class Noise:
    settings: NoiseSettings
    seed: int = 0
    stats: NoiseStats = field(default_factory=NoiseStats)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def delay(self) -> float:
        if not self.settings.delay_max:
            return 0.0
        return self._rng.uniform(0.0, self.settings.delay_max)

    def apply(self, chunk: bytes) -> bytes:
        self.stats.chunks += 1
        self.stats.bytes_in += len(chunk)
        s = self.settings
        if s.quiet or not chunk:
            self.stats.bytes_out += len(chunk)
            return chunk
        data = bytearray(chunk)
        if s.burst_rate and self._rng.random() < s.burst_rate:
            start = self._rng.randrange(len(data))
            length = self._rng.randint(1, s.burst_max)
            removed = len(data[start : start + length])
            del data[start : start + length]
            self.stats.dropped += removed
        out = bytearray()
        rng = self._rng
        for byte in data:
            if s.drop_rate and rng.random() < s.drop_rate:
                self.stats.dropped += 1
                continue
            if s.corrupt_rate and rng.random() < s.corrupt_rate:
                byte ^= 1 << rng.randrange(8)
                self.stats.corrupted += 1
            out.append(byte)
        self.stats.bytes_out += len(out)
        return bytes(out)
