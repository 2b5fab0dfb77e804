"""The systemd unit, udev rule and example config that ship with syncd say what they must."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

from syncd import config as config_mod

ROOT = Path(__file__).resolve().parents[2] / "packaging"


def unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    parser.read(ROOT / "systemd" / "taxctl-syncd.service")
    return parser


def test_service_unit_directives() -> None:
    service = unit()["Service"]
    assert service["Type"] == "notify"
    assert int(service["WatchdogSec"]) > 0
    assert service["Restart"] == "on-failure"
    assert "dialout" in service["SupplementaryGroups"]
    assert service["StateDirectory"]
    assert service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] == "yes"
    assert "$MAINPID" in service["ExecReload"] and "HUP" in service["ExecReload"]
    # enough descriptors for the API's cap and the devices; one value, soft = hard, so
    # syncd never calls setrlimit (SystemCallFilter=~@resources would forbid it)
    assert int(service["LimitNOFILE"]) >= 4096


def test_service_command_and_example_config_parse(tmp_path: Path) -> None:
    argv = shlex.split(unit()["Service"]["ExecStart"])
    assert argv[1:3] == ["syncd", "run"]
    args = config_mod.namespace(argv[3:])
    assert args.config == Path("/etc/taxctl/syncd.toml")
    example = config_mod.namespace(["--config", str(ROOT / "syncd.toml"), "--state", str(tmp_path)])
    cfg = config_mod.load(example, environ={})
    assert [d.name for d in cfg.devices] == ["till-1", "till-2"]
    assert len(cfg.chain_urls) == 2


def test_udev_rule_gives_a_stable_symlink_for_dialout() -> None:
    text = (ROOT / "udev" / "99-taxctl-printer.rules").read_text()
    rules = [line for line in text.replace("\\\n", " ").splitlines() if line and line[0] != "#"]
    assert rules
    for rule in rules:
        assert 'SUBSYSTEM=="tty"' in rule and "SYMLINK+=" in rule and 'GROUP="dialout"' in rule
