"""Registering devices with the tax bureau's chain, and keeping them in numbers.

`register_device` walks a new device through CSR -> certificate -> first
number segment (`taxctl syncd register`). It can be run again after an
interruption: a device that already holds its certificate only gets what
it still lacks.

`Registrar` runs inside the daemon, before each sync round:
- a training device provisions itself (self-signed training certificate
  and segment); on first contact syncd registers those with the chain;
- when a device runs low on invoice numbers (`registration.low_numbers`),
  syncd asks the chain for a new segment and loads it.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from device.client import DeviceClient
from device.protocol import chainapi, invoice, taxid
from device.protocol.status import DeviceError, Status
from device.protocol.untrusted import shown
from syncd.chainhealth import ChainHealth
from syncd.chainport import ChainDown, ChainGateway, ChainRefused
from syncd.config import Config, default
from syncd.link import DeviceLink
from syncd.metrics import SyncdMetrics

log = logging.getLogger("taxctl.syncd")

# The codes with which the chain says it does not know a device or its numbers;
# registering again (training devices) can fix these.
REGISTER_AGAIN_CODES = frozenset({chainapi.UNKNOWN_DEVICE, chainapi.UNKNOWN_SEGMENT})


ENROLMENT_CODE = re.compile(r"ENR(-[0-9A-HJKMNP-TV-Z]{4}){4}", re.ASCII)


class RegistrationError(Exception):
    """Registration cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class RegistrationSettings:
    """The `registration.*` options the daemon uses (syncd/config.py declares them)."""

    auto_segments: bool = default("registration.auto_segments")
    low_numbers: int = default("registration.low_numbers")
    segment_size: int = default("registration.segment_size")

    @classmethod
    def of(cls, cfg: Config) -> RegistrationSettings:
        return cls(**cfg.section("registration", (f.name for f in fields(cls))))


def check_enrolment_code(code: str | None) -> str | None:
    """The code as the bureau prints it (spaces trimmed, upper case), or None for none."""
    if code is None or not code.strip():
        return None
    code = code.strip().upper()
    if not ENROLMENT_CODE.fullmatch(code):
        raise RegistrationError(
            "an enrolment code looks like ENR-XXXX-XXXX-XXXX-XXXX (from the tax bureau)"
        )
    return code


def check_taxpayer(tax_id: str, name: str) -> dict[str, str]:
    """The taxpayer a certificate will name, by the device's own rules for printed names."""
    problem = taxid.problem(tax_id)
    if problem is not None:
        raise RegistrationError(f"taxpayer tax id {shown(tax_id)}: {problem}")
    try:
        name = invoice.check_text(name.strip(), "taxpayer name")
    except DeviceError as exc:
        raise RegistrationError(exc.detail) from None
    return {"tax_id": tax_id, "name": name}


async def register_device(
    client: DeviceClient,
    chain: ChainGateway,
    taxpayer: dict[str, str],
    *,
    segment_size: int,
    enrolment_code: str | None = None,
) -> dict[str, Any]:
    """CSR -> certificate -> first segment. Returns what was done, as plain data."""
    await client.hello()
    info = await client.info()
    device_id = str(info["device_id"])
    steps: list[str] = []
    if info.get("training"):
        await chain.register(certificate=info["certificate"], segments=list(info["segments"]))
        return {
            "device_id": device_id,
            "training": True,
            "steps": ["training device: registered its own certificate and segments"],
            "taxpayer": info.get("taxpayer"),
        }
    if info.get("registered"):
        held = info.get("taxpayer") or {}
        if held.get("tax_id") != taxpayer["tax_id"]:
            raise RegistrationError(
                f"device {device_id} is already registered to {held.get('tax_id')} "
                f"({held.get('name')}); a device cannot change taxpayer"
            )
        steps.append("certificate already loaded")
    else:
        csr = await client.csr(taxpayer)
        # The chain port checked its answer: the certificate is bytes (else ChainDown).
        answer = await chain.register(csr=csr["csr"], enrolment_code=enrolment_code)
        loaded = await client.load_cert(answer.certificate)
        steps.append(f"certificate serial {loaded.get('serial')} loaded")
    if not info.get("segments"):
        request = await client.segment_request(segment_size)
        segment = await chain.allocate_segment(device_id, request)
        loaded = await client.load_segment(segment)
        steps.append(
            f"segment {loaded['code']} {loaded['start']:08d}-{loaded['end']:08d} loaded "
            f"({loaded['numbers_left']} numbers)"
        )
    else:
        steps.append(f"{len(info['segments'])} segment(s) already loaded")
    status = await client.status()
    return {
        "device_id": device_id,
        "training": False,
        "taxpayer": taxpayer,
        "steps": steps,
        "numbers_left": status.get("numbers_left"),
        "can_issue": status.get("can_issue"),
        "blocking": status.get("blocking"),
    }


class Registrar:
    """Registration chores the daemon does by itself, before each sync round."""

    RETRY_AFTER = 30.0

    def __init__(
        self,
        chain: ChainGateway,
        settings: RegistrationSettings,
        metrics: SyncdMetrics | None = None,
        health: ChainHealth | None = None,
    ) -> None:
        self.chain = chain
        self.settings = settings
        self.metrics = metrics
        # A registration or a segment is an answer from the chain: without telling the
        # shared health, status and systemd's STATUS said "chain unknown" after it.
        self.health = health
        self.known: set[str] = set()
        self._segment_after: dict[str, float] = {}
        self._refixed_at: dict[str, float] = {}

    def forget(self, device_id: str) -> None:
        """The chain said it does not know this device (or its numbers): register again."""
        self.known.discard(device_id)

    def on_rejections(self, device_id: str, codes: Sequence[object]) -> bool:
        """True if registering again may fix these rejections (the caller retries soon
        instead of counting them); at most once a minute per device, so a chain that
        keeps saying no is reported rather than looped on. A code that is not text
        (from a port that does not check its answers) is no known code."""
        if not any(isinstance(c, str) and c in REGISTER_AGAIN_CODES for c in codes):
            return False
        now = time.monotonic()
        if now - self._refixed_at.get(device_id, -1e9) < 60.0:
            return False
        self._refixed_at[device_id] = now
        self.forget(device_id)
        return True

    async def before_round(self, link: DeviceLink) -> None:
        device_id, info = link.device_id, link.info
        if device_id is None or info is None:
            return
        if info.training and device_id not in self.known:
            await self._register_training(link)
        if self.settings.auto_segments:
            await self._top_up(link)

    async def _register_training(self, link: DeviceLink) -> None:
        fresh = await link.refresh_info()
        if not fresh.certificate:
            return
        try:
            await self.chain.register(certificate=fresh.certificate, segments=list(fresh.segments))
        except ChainRefused as exc:
            log.error("%s: the chain refused its training registration: %s", link.label, exc)
            return
        if self.health is not None:
            self.health.success()
        self.known.add(fresh.device_id)
        log.info("%s: training certificate and segments registered with the chain", link.label)

    async def _top_up(self, link: DeviceLink) -> None:
        status, info, device_id = link.status, link.info, link.device_id
        if status is None or info is None or device_id is None or not info.registered:
            return
        left = status.numbers_left
        if left >= self.settings.low_numbers:
            return
        now = time.monotonic()
        if now < self._segment_after.get(device_id, 0.0):
            return
        client = link.require()
        # The device signs the request: the chain allocates only on its certified key.
        request = await client.segment_request(self.settings.segment_size)
        try:
            segment = await self.chain.allocate_segment(device_id, request)
        except ChainRefused as exc:
            # Asking again at once would be refused again: wait before the next try.
            self._segment_after[device_id] = now + self.RETRY_AFTER
            log.error("%s: the chain refused a new number segment: %s", link.label, exc)
            return
        except ChainDown as exc:
            log.warning("%s: numbers low (%d) and the chain is away: %s", link.label, left, exc)
            return
        if self.health is not None:
            self.health.success()
        try:
            loaded = await client.load_segment(segment)
        except DeviceError as exc:
            if exc.status == Status.SEGMENT_INVALID:
                log.error("%s: device refused the chain's segment: %s", link.label, exc.text)
                return
            raise
        link.segment_loaded(segment, loaded.get("numbers_left"))
        if self.metrics:
            self.metrics.segments_loaded.inc(1, device_id)
        log.info(
            "%s: numbers were low (%d); loaded segment %s %s-%s",
            link.label,
            left,
            shown(loaded.get("code")),
            shown(loaded.get("start")),
            shown(loaded.get("end")),
        )
