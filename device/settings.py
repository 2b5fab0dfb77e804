"""What a device is set up with once, at personalisation, in `device.json`.

The pinned bureau key and the training flag never change afterwards; a
later start that asks for something different is refused rather than
silently ignored. Limits, capacity and tax rates may be changed at a
restart (an operator reconfiguring the emulator), and are recorded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from device.limits import DEFAULT_OFFLINE_AMOUNT, DEFAULT_OFFLINE_SECONDS, Limits
from device.privatefile import write_private
from device.protocol.invoice import DEFAULT_TAX_RATES
from device.protocol.untrusted import InputRefused, loads_json, shown

SETTINGS_FILE = "device.json"
DEFAULT_CAPACITY = 10_000_000
DEFAULT_MAX_CLOCK_STEP = 86_400  # seconds SET_TIME may move the clock forward at once
FIRMWARE = "taxctl-emu 0.1.0"


class SettingsError(RuntimeError):
    """The state directory's settings are missing, damaged, or contradict the flags."""


@dataclass(frozen=True)
class Settings:
    device_id: str
    training: bool
    bureau_key: bytes
    limits: Limits = field(default_factory=Limits)
    capacity: int = DEFAULT_CAPACITY
    tax_rates: frozenset[int] = DEFAULT_TAX_RATES
    max_clock_step: int = DEFAULT_MAX_CLOCK_STEP

    def to_json(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "training": self.training,
            "bureau_key": self.bureau_key.hex(),
            "offline_seconds": self.limits.offline_seconds,
            "offline_amount": self.limits.offline_amount,
            "online_grace": self.limits.online_grace,
            "capacity": self.capacity,
            "tax_rates": sorted(self.tax_rates),
            "max_clock_step": self.max_clock_step,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Settings:
        """The settings `to_json` wrote; SettingsError naming the field for anything else
        (no int()/bool()/str() of whatever the file holds: "false" is not False)."""
        try:
            rates = _typed(data.get("tax_rates", sorted(DEFAULT_TAX_RATES)), list, "tax_rates")
            return cls(
                device_id=_typed(data.get("device_id"), str, "device_id"),
                training=_typed(data.get("training"), bool, "training"),
                bureau_key=bytes.fromhex(_typed(data.get("bureau_key"), str, "bureau_key")),
                limits=Limits(
                    _typed(data.get("offline_seconds", DEFAULT_OFFLINE_SECONDS), int, "a limit"),
                    _typed(data.get("offline_amount", DEFAULT_OFFLINE_AMOUNT), int, "a limit"),
                    _typed(data.get("online_grace", Limits().online_grace), int, "a limit"),
                ),
                capacity=_typed(data.get("capacity", DEFAULT_CAPACITY), int, "capacity"),
                tax_rates=frozenset(_typed(r, int, "a tax rate") for r in rates),
                max_clock_step=_typed(
                    data.get("max_clock_step", DEFAULT_MAX_CLOCK_STEP), int, "max_clock_step"
                ),
            )
        except ValueError as exc:
            raise SettingsError(f"{SETTINGS_FILE} is damaged: {exc}") from None


T = TypeVar("T")


def _typed(value: Any, kind: type[T], what: str) -> T:
    if type(value) is not kind:  # exactly: True is no count, 2.5 no capacity
        raise ValueError(f"{what} is {shown(value)}, not {kind.__name__}")
    return value


def save(state: Path, settings: Settings) -> None:
    path = state / SETTINGS_FILE
    tmp = path.with_suffix(".json.new")
    write_private(tmp, (json.dumps(settings.to_json(), indent=2) + "\n").encode())
    os.replace(tmp, path)


def load(state: Path) -> Settings | None:
    path = state / SETTINGS_FILE
    if not path.exists():
        return None
    try:
        data = loads_json(path.read_bytes())
    except OSError as exc:
        raise SettingsError(f"cannot read {path}: {exc}") from None
    except InputRefused as exc:  # not JSON, NaN, nested too deep ...
        raise SettingsError(f"{path} is damaged: {exc}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"{path} is not a JSON object")
    return Settings.from_json(data)


def reconcile(
    existing: Settings,
    *,
    training: bool | None,
    bureau_key: bytes | None,
    limits: Limits | None,
    capacity: int | None,
    tax_rates: frozenset[int] | None,
    max_clock_step: int | None = None,
) -> Settings:
    """Apply restart-time flags to stored settings; refuse identity changes."""
    if training is not None and training != existing.training:
        mode = "training" if existing.training else "production"
        raise SettingsError(
            f"this device was personalised in {mode} mode; it cannot change mode "
            "(use a new --state directory for a new device)"
        )
    if bureau_key is not None and bureau_key != existing.bureau_key:
        raise SettingsError(
            "this device already pins a different tax bureau key; the pinned key never changes"
        )
    updated = existing
    if limits is not None:
        updated = replace(updated, limits=limits)
    if capacity is not None:
        updated = replace(updated, capacity=capacity)
    if tax_rates is not None:
        updated = replace(updated, tax_rates=tax_rates)
    if max_clock_step is not None:
        updated = replace(updated, max_clock_step=max_clock_step)
    return updated
