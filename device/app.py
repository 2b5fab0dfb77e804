"""Putting a device together: state directory, personalisation, serving a port."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sqlite3
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from device import settings as settings_mod
from device import signer
from device.firmware import Firmware
from device.journal import Journal, JournalError
from device.limits import Limits
from device.protocol import trust
from device.protocol.clock import Clock, SystemClock
from device.protocol.commands import DEFAULT_MAX_IN_FLIGHT
from device.protocol.keys import KeyPair
from device.server import DeviceServer
from device.settings import Settings, SettingsError
from device.statelock import StateLock
from device.transport import Port, create_pty, open_serial

log = logging.getLogger("taxctl.device")


def open_device(
    state: Path,
    *,
    training: bool | None = None,
    bureau_key: bytes | None = None,
    limits: Limits | None = None,
    capacity: int | None = None,
    tax_rates: frozenset[int] | None = None,
    clock: Clock | None = None,
    max_page_count: int | None = None,
    max_clock_step: int | None = None,
) -> Firmware:
    """Open a device's state, personalising it on first start. The state stays
    locked to this process until `Firmware.close()` (or the process ends).

    A state directory the process cannot write (read-only, another owner's, a
    full or read-only file system) raises SettingsError saying so in one line."""
    try:
        return _open_device(
            state,
            training=training,
            bureau_key=bureau_key,
            limits=limits,
            capacity=capacity,
            tax_rates=tax_rates,
            clock=clock or SystemClock(),
            max_page_count=max_page_count,
            max_clock_step=max_clock_step,
        )
    except OSError as exc:
        why = exc.strerror or str(exc)
        where = f" ({exc.filename})" if exc.filename else ""
        raise SettingsError(f"the state directory {state} cannot be used: {why}{where}") from None
    except (sqlite3.Error, JournalError) as exc:
        raise SettingsError(
            f"the state directory {state} cannot be used: its journal cannot be opened "
            f"for writing ({exc})"
        ) from None


def _open_device(
    state: Path,
    *,
    training: bool | None,
    bureau_key: bytes | None,
    limits: Limits | None,
    capacity: int | None,
    tax_rates: frozenset[int] | None,
    clock: Clock,
    max_page_count: int | None,
    max_clock_step: int | None = None,
) -> Firmware:
    state.mkdir(parents=True, exist_ok=True)
    # Keep others out of the keys, but never grant the owner a right the directory's
    # owner took away: a directory made read-only stays so, and is refused below.
    mode = stat.S_IMODE(state.stat().st_mode)
    if mode & 0o077:
        os.chmod(state, mode & 0o700)
    lock = StateLock(state)  # before anything is read or written: a second printer stops here
    try:
        asked = _Asked(training, bureau_key, limits, capacity, tax_rates, max_clock_step)
        existing = settings_mod.load(state)
        if existing is None:
            key, current = _personalise(state, asked)
        else:
            key, current = _reopen(state, existing, asked)
        journal = Journal(state, max_page_count=max_page_count)
        fw = Firmware(current, key, journal, clock, state)
        fw.state_lock = lock
        if current.training:
            fw.credentials.provision_training(clock.now())
    except BaseException:
        lock.release()
        raise
    return fw


@dataclass(frozen=True)
class _Asked:
    """What the command line asked of the settings (None: not given)."""

    training: bool | None
    bureau_key: bytes | None
    limits: Limits | None
    capacity: int | None
    tax_rates: frozenset[int] | None
    max_clock_step: int | None


def _personalise(state: Path, asked: _Asked) -> tuple[KeyPair, Settings]:
    """A new device: its key, and the settings it keeps from now on."""
    training, bureau_key = asked.training, asked.bureau_key
    if not training and bureau_key is None:
        raise SettingsError(
            f"{state} holds no device yet: personalise it with --training, or with "
            "--bureau-key HEX (the tax bureau's public key to pin)"
        )
    training_key = trust.TRAINING_BUREAU.public_key
    if training and bureau_key is not None and bureau_key != training_key:
        raise SettingsError("a training device pins the well-known training bureau key")
    # A crash after the key was written but before the settings: reuse that key.
    key = signer.load_key(state) if signer.key_exists(state) else signer.create_key(state)
    current = Settings(
        device_id=trust.device_id_for(key.public_key),
        training=bool(training),
        bureau_key=training_key if training else bureau_key or b"",
        limits=asked.limits or Limits(),
        capacity=asked.capacity or settings_mod.DEFAULT_CAPACITY,
        tax_rates=asked.tax_rates or settings_mod.DEFAULT_TAX_RATES,
        max_clock_step=asked.max_clock_step or settings_mod.DEFAULT_MAX_CLOCK_STEP,
    )
    settings_mod.save(state, current)
    log.info(
        "personalised device %s (%s)",
        current.device_id,
        "training" if current.training else "production",
    )
    return key, current


def _reopen(state: Path, existing: Settings, asked: _Asked) -> tuple[KeyPair, Settings]:
    """A device personalised before: its key, and its settings with what may change."""
    key = signer.load_key(state)
    if trust.device_id_for(key.public_key) != existing.device_id:
        raise SettingsError(f"the key in {state} does not belong to device {existing.device_id}")
    current = settings_mod.reconcile(
        existing,
        training=asked.training,
        bureau_key=asked.bureau_key,
        limits=asked.limits,
        capacity=asked.capacity,
        tax_rates=asked.tax_rates,
        max_clock_step=asked.max_clock_step,
    )
    if current != existing:
        settings_mod.save(state, current)
    return key, current


def open_port(
    spec: str,
    link: Path | None,
    *,
    baud: int,
    pace: bool,
    parity: str = "N",
    stopbits: float = 1,
    rtscts: bool = False,
) -> Port:
    if spec == "pty":
        if link is None:
            raise SettingsError("--port pty needs --link PATH for the symlink hosts open")
        return create_pty(link, baud=baud, pace=pace, parity=parity, stopbits=stopbits)
    return open_serial(spec, baud=baud, parity=parity, stopbits=stopbits, rtscts=rtscts)


async def serve(
    fw: Firmware,
    port: Port,
    *,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    link: Path | None = None,
) -> bool:
    """Serve until SIGTERM/SIGINT (True) or until the port goes away (False)."""
    server = DeviceServer(fw, port, max_in_flight=max_in_flight)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    def toggle(flag: str) -> None:
        setattr(fw, flag, not getattr(fw, flag))
        log.info("%s: %s is now %s", fw.settings.device_id, flag, getattr(fw, flag))

    loop.add_signal_handler(signal.SIGUSR1, toggle, "paper_out")
    loop.add_signal_handler(signal.SIGUSR2, toggle, "cover_open")
    ready = {
        "event": "ready",
        "link": port.name,
        "device_id": fw.settings.device_id,
        "training": fw.settings.training,
        "counter": fw.head.counter,
    }
    sys.stdout.write(json.dumps(ready) + "\n")
    sys.stdout.flush()
    log.info(
        "device %s serving on %s, counter %d", fw.settings.device_id, port.name, fw.head.counter
    )
    try:
        await server.serve(stop)
    finally:
        port.close()
        fw.close()
        if link is not None:
            with contextlib.suppress(OSError):
                if link.is_symlink() and not link.exists():
                    link.unlink()  # our pty is gone: leave no dangling link for hosts
        log.info("device %s stopped at counter %d", fw.settings.device_id, fw.head.counter)
    return stop.is_set()
