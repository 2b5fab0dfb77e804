"""NoisyPort: hostsim's noise model on a Port, in-process (the pty proxy's twin)."""

from __future__ import annotations

import asyncio

from device.loopback import memory_pair
from hostsim.noise import Noise, NoiseSettings
from hostsim.noisyport import NoisyPort

DATA = bytes(range(256)) * 8


async def _through(settings: NoiseSettings, seed: int, chunks: int = 20) -> tuple[bytes, bytes]:
    """(what the device end got, what the host read back) for `chunks` writes each way."""
    host, device = memory_pair()
    noisy = NoisyPort(host, settings, seed=seed)
    for _ in range(chunks):
        noisy.write(DATA)
        device.write(DATA)
    got_device, got_host = bytearray(), bytearray()

    async def drain(read: object, into: bytearray) -> None:
        while True:
            try:
                into.extend(await asyncio.wait_for(read(), 0.3))  # type: ignore[operator]
            except TimeoutError:
                return

    await asyncio.gather(drain(device.read, got_device), drain(noisy.read, got_host))
    noisy.close()
    assert device.closed  # closing the wrapper closes the port it wraps
    return bytes(got_device), bytes(got_host)


async def test_a_quiet_line_passes_everything_unchanged_and_in_order() -> None:
    sent = DATA * 20
    assert await _through(NoiseSettings(), 1) == (sent, sent)


async def test_latency_delays_but_never_reorders() -> None:
    sent = DATA * 20
    assert await _through(NoiseSettings(delay_max=0.01), 1) == (sent, sent)


async def test_damage_follows_the_model_and_repeats_with_the_seed() -> None:
    settings = NoiseSettings(corrupt_rate=0.01, drop_rate=0.01, burst_rate=0.2, burst_max=20)
    first = await _through(settings, 7)
    assert first == await _through(settings, 7)
    assert first != await _through(settings, 8)
    # the same bytes the pure model gives for the same seeds (seed one way, seed + 1 back)
    to_device, to_host = Noise(settings, 7), Noise(settings, 8)
    assert first[0] == b"".join(to_device.apply(DATA) for _ in range(20))
    # the host reads what arrived meanwhile in one chunk: the model sees one chunk too
    assert first[1] == to_host.apply(DATA * 20)
