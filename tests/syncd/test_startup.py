"""Starting syncd with a configuration or state directory it cannot use: one line, an exit code."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from syncd.cli import EXIT_STATE, EXIT_USAGE
from tests.helpers import run_taxctl

BASE = ["syncd", "run", "--chain", "http://127.0.0.1:1", "--device", "/dev/null-printer"]


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e999"])
@pytest.mark.parametrize("flag", ["--sync-backoff-max", "--chain-timeout", "--link-reopen-max"])
def test_a_non_finite_number_flag_is_refused_by_name(tmp_path: Path, flag: str, value: str) -> None:
    out = run_taxctl(*BASE, "--state", str(tmp_path / "state"), f"{flag}={value}", timeout=30)
    assert out.returncode == EXIT_USAGE, out.stderr
    assert out.stderr.count("\n") == 1 and flag in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_nan_in_the_config_file_is_refused_with_its_line(tmp_path: Path) -> None:
    config = tmp_path / "syncd.toml"
    config.write_text('[chain]\nurls = ["http://127.0.0.1:1"]\n[sync]\nbackoff_max = nan\n')
    out = run_taxctl("syncd", "run", "--config", str(config), "--device", "x", timeout=30)
    assert out.returncode == EXIT_USAGE, out.stderr
    assert out.stderr.count("\n") == 1, out.stderr
    assert "syncd.toml:4" in out.stderr and "sync.backoff_max" in out.stderr, out.stderr


DEEP = "[" * 5000 + "1" + "]" * 5000
URLS = '[chain]\nurls = ["http://127.0.0.1:1"]\n'
PRINTER = '[[device]]\nport = "/dev/null-printer"\n'


@pytest.mark.parametrize(
    ("what", "text", "key"),
    [
        (
            "a value nested 5000 deep",
            URLS + PRINTER + "[sync]\nbatch_max = " + DEEP + "\n",
            "config",
        ),
        ("a state path holding NUL", 'state = "st\\u0000ate"\n' + URLS + PRINTER, "state"),
        (
            "a socket path holding NUL",
            URLS + PRINTER + '[api]\nsocket = "a\\u0000b"\n',
            "api.socket",
        ),
        ("a device port holding NUL", URLS + '[[device]]\nport = "/dev/x\\u0000"\n', "port"),
    ],
)
def test_a_config_file_that_python_cannot_take_is_one_line(
    tmp_path: Path, what: str, text: str, key: str
) -> None:
    """tomllib recurses per nesting level (RecursionError) and a path with NUL makes
    os calls raise ValueError: a traceback at start, or a printer link that crash-loops,
    where a line naming the key was due."""
    config = tmp_path / "syncd.toml"
    config.write_text(text.replace('state = "st', f'state = "{tmp_path}/st'))
    try:
        out = run_taxctl(
            "syncd", "run", "--config", str(config), "--api", "127.0.0.1:0", timeout=20
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{what}: syncd started and ran with it") from None
    assert out.returncode == EXIT_USAGE, (what, out.stderr[-300:])
    assert out.stderr.count("\n") == 1 and key in out.stderr, (what, out.stderr[-300:])
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("value", ["x" * 100_000, "127.0.0.1:" + "9" * 100_000])
def test_a_huge_listen_address_is_refused_in_a_short_line(tmp_path: Path, value: str) -> None:
    """parse_listen quoted the whole value with !r: a 100,000-character api.listen made a
    100,000-character error line (and a port of 100,000 digits reached int())."""
    config = tmp_path / "syncd.toml"
    config.write_text(URLS + PRINTER + f'[api]\nlisten = "{value}"\n')
    out = run_taxctl("syncd", "run", "--config", str(config), timeout=30)
    assert out.returncode == EXIT_USAGE, out.stderr[-300:]
    assert out.stderr.count("\n") == 1 and "api.listen" in out.stderr
    assert len(out.stderr) < 400, f"an error line of {len(out.stderr)} characters"


def make_read_only(path: Path) -> None:
    """Read-only even for root (whom permission bits do not stop): the immutable flag."""
    if os.geteuid() != 0:
        os.chmod(path, 0o555)
    elif subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("running as root on a file system without chattr +i")


def make_writable(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    os.chmod(path, 0o755)


@pytest.mark.parametrize("existing", [True, False])
def test_a_read_only_state_directory_is_one_line_naming_it(tmp_path: Path, existing: bool) -> None:
    locked = tmp_path / "state" if existing else tmp_path / "parent"
    state = locked if existing else locked / "state"
    locked.mkdir()
    make_read_only(locked)
    try:
        out = run_taxctl(*BASE, "--state", str(state), timeout=30)
    finally:
        make_writable(locked)
    assert out.returncode == EXIT_STATE, out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    assert f"state directory {state} is not writable" in out.stderr and "--state" in out.stderr
