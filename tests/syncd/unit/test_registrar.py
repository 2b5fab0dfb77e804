"""Registrar: what the daemon does by itself about registration, before each round."""

from __future__ import annotations

from pathlib import Path

from device.protocol import chainapi
from syncd.chainhealth import ChainHealth
from syncd.registration import Registrar, RegistrationSettings
from tests.syncd.unit.memory import MemoryChain, memory_printer

NO_SEGMENTS = RegistrationSettings(auto_segments=False)


async def test_a_training_device_is_registered_once_with_its_own_certificate(
    tmp_path: Path,
) -> None:
    async with memory_printer(tmp_path) as printer:
        chain = MemoryChain()
        health = ChainHealth()
        registrar = Registrar(chain, NO_SEGMENTS, health=health)
        await registrar.before_round(printer.link)
        await registrar.before_round(printer.link)
        info = printer.link.info
        assert info is not None and info.training
        assert chain.registered == [
            {"certificate": info.certificate, "segments": list(info.segments)}
        ]
        assert health.ok is True  # a registration is an answer from the chain


async def test_a_refused_training_registration_is_tried_again_next_round(tmp_path: Path) -> None:
    async with memory_printer(tmp_path) as printer:
        chain = MemoryChain(refuse_registration=True)
        registrar = Registrar(chain, NO_SEGMENTS)
        await registrar.before_round(printer.link)
        assert chain.registered == [] and printer.link.device_id not in registrar.known
        chain.refuse_registration = False
        await registrar.before_round(printer.link)
        assert len(chain.registered) == 1


async def test_the_chains_unknown_device_or_segment_codes_register_again(
    tmp_path: Path,
) -> None:
    async with memory_printer(tmp_path) as printer:
        chain = MemoryChain()
        registrar = Registrar(chain, NO_SEGMENTS)
        device = printer.link.device_id or ""
        await registrar.before_round(printer.link)
        assert device in registrar.known
        assert registrar.on_rejections(device, ["totals_mismatch"]) is False
        assert registrar.on_rejections(device, [chainapi.UNKNOWN_DEVICE.value]) is True
        assert device not in registrar.known
        # at most once a minute: a chain that keeps saying so is reported, not looped on
        assert registrar.on_rejections(device, [chainapi.UNKNOWN_SEGMENT.value]) is False
        other = "TC000000000009"
        assert registrar.on_rejections(other, [chainapi.UNKNOWN_SEGMENT.value]) is True
        # spellings the chain does not use are no such code
        assert registrar.on_rejections("TC000000000008", ["DEVICE_UNKNOWN"]) is False
