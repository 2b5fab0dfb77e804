"""Every syncd default is declared once, in config.OPTIONS; settings objects derive from it."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from device.protocol import commands
from syncd import config
from syncd.config import DeviceConfig
from syncd.engine import SyncSettings
from syncd.link import LinkSettings
from syncd.registration import RegistrationSettings

SETTINGS: list[tuple[Any, str]] = [
    (SyncSettings, "sync"),
    (LinkSettings, "link"),
    (RegistrationSettings, "registration"),
]


def test_each_settings_default_is_the_options_default() -> None:
    for cls, section in SETTINGS:
        made = cls()
        for f in fields(cls):
            assert getattr(made, f.name) == config.default(f"{section}.{f.name}"), f.name
    device = DeviceConfig(port="/dev/x", name="x")
    for key in ("baud", "parity", "stopbits", "rtscts"):
        assert getattr(device, key) == config.default(f"serial.{key}")


def test_the_protocol_defaults_are_the_options_defaults() -> None:
    assert config.default("link.response_timeout") == commands.RESPONSE_TIMEOUT
    assert config.default("link.max_retries") == commands.MAX_RETRIES
    assert config.default("sync.fetch_max_bytes") == commands.FETCH_MAX_BYTES
    assert config.BY_KEY["sync.fetch_max_bytes"].high == commands.FETCH_MAX_BYTES


def test_settings_are_built_from_the_effective_configuration() -> None:
    args = config.namespace(
        [
            "--chain=http://127.0.0.1:1",
            "--device=/dev/x",
            "--sync-batch-max=7",
            "--sync-backoff-initial=9",
            "--sync-backoff-max=2",
            "--link-max-in-flight=3",
            "--registration-low-numbers=11",
        ]
    )
    cfg = config.load(args, environ={})
    sync = SyncSettings.of(cfg)
    assert (sync.batch_max, sync.backoff_initial, sync.backoff_max) == (7, 2.0, 2.0)
    assert LinkSettings.of(cfg).max_in_flight == 3
    assert RegistrationSettings.of(cfg).low_numbers == 11
