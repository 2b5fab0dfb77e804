"""The systemd unit, udev rule and example config that ship with syncd say what they must."""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from syncd import config as config_mod
from tests.helpers import python_for

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


# --- the rules, one per adapter, for every event but remove ---------------------------------

ADAPTERS = {
    "FTDI": ("0403", "6001"),
    "CH340": ("1a86", "7523"),
    "PL2303": ("067b", "2303"),
    "CP210x": ("10c4", "ea60"),
}


def udev_rules() -> list[str]:
    text = (ROOT / "udev" / "99-taxctl-printer.rules").read_text()
    return [line for line in text.replace("\\\n", " ").splitlines() if line and line[0] != "#"]


def test_udev_rules_match_change_events_and_every_common_adapter() -> None:
    rules = udev_rules()
    # `udevadm trigger` sends "change": an ACTION=="add" rule makes no link for an
    # adapter already plugged in, and drops the link on any later change event
    for rule in rules:
        assert 'ACTION!="remove"' in rule and 'ACTION=="add"' not in rule
        assert 'ENV{ID_MM_DEVICE_IGNORE}="1"' in rule and 'MODE="0660"' in rule
    for name, (vendor, product) in ADAPTERS.items():
        ids = f'ATTRS{{idVendor}}=="{vendor}", ATTRS{{idProduct}}=="{product}"'
        assert sum(ids in rule for rule in rules) == 1, name
    assert len(rules) == len(ADAPTERS)


def test_udevadm_verify_accepts_the_rules() -> None:
    udevadm = shutil.which("udevadm")
    if udevadm is None:
        pytest.skip("udevadm is not installed")
    probe = subprocess.run([udevadm, "verify", "--help"], capture_output=True, timeout=10)
    if probe.returncode != 0:
        pytest.skip("this udevadm has no verify command (systemd 254 or later has it)")
    path = ROOT / "udev" / "99-taxctl-printer.rules"
    done = subprocess.run(
        [udevadm, "verify", str(path)], capture_output=True, text=True, timeout=10
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --- the unit, through systemd's own parser ---------------------------------------------------


def test_usb_serial_devices_are_allowed_by_major_number() -> None:
    allowed = unit()["Service"]["DeviceAllow"]  # strict=False keeps the last value only
    text = (ROOT / "systemd" / "taxctl-syncd.service").read_text()
    lines = [
        line.partition("=")[2] for line in text.splitlines() if line.startswith("DeviceAllow=")
    ]
    assert allowed in lines
    # a name is resolved from /proc/devices at unit start: before usbserial or cdc_acm
    # is loaded it matches nothing, and a printer plugged in later gets EPERM
    assert "char-188 rw" in lines and "char-166 rw" in lines
    assert not [line for line in lines if "ttyUSB" in line or "ttyACM" in line]
    assert "char-ttyS rw" in lines and "char-pts rw" in lines


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify insists that ExecStart's binary exists: point a copy at one that does
    text = (ROOT / "systemd" / "taxctl-syncd.service").read_text()
    binary = shutil.which("true") or "/bin/true"
    copy = tmp_path / "taxctl-syncd.service"
    copy.write_text(text.replace("ExecStart=/usr/local/bin/taxctl ", f"ExecStart={binary} "))
    assert copy.read_text() != text
    done = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "taxctl-syncd.service" not in output, output  # no warning about any directive


# --- a config file the service user cannot read ---------------------------------------------


def _python_for(user: str) -> list[str] | None:
    """An interpreter `user` can run with this tree and its packages, if there is one."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    drop = [setpriv, f"--reuid={user}", "--regid=nogroup", "--clear-groups"]
    found = python_for(drop, ROOT.parent)
    if found is None:
        return None
    python, path = found
    return [*drop, "env", f"PYTHONPATH={path}", python]


def test_unreadable_config_names_the_file_and_the_fix() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run syncd as another user")
    python = _python_for("nobody")
    if python is None:
        pytest.skip("no setpriv, or no interpreter the user nobody can run")
    # not tmp_path: pytest makes its parents 0700, and the point is the file's own mode
    with tempfile.TemporaryDirectory() as where:
        os.chmod(where, 0o755)
        config = Path(where) / "syncd.toml"
        shutil.copy(ROOT / "syncd.toml", config)
        config.chmod(0o000)
        done = subprocess.run(
            [*python, "-m", "taxctl", "syncd", "run", "--config", str(config),
             "--state", str(Path(where) / "state")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"taxctl syncd: {config}: config: cannot read: permission denied")
    assert f"chmod 0644 {config}" in lines[0]
