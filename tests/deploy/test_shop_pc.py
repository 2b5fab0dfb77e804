"""A shop PC set up by the book: docs/operating.md's install block run as it stands into a
temporary root, the unit checked by systemd, syncd run as the unit's user and groups
from the installed files, and its /metrics read by promtool.

What systemd itself would do at start is done here by hand, from the unit's own
directives (so they cannot drift): a fresh uid like a DynamicUser=yes one, the groups of
SupplementaryGroups=, NoNewPrivileges=, UMask=, and StateDirectory= made with
StateDirectoryMode= and handed over in $STATE_DIRECTORY.
"""

from __future__ import annotations

import configparser
import grp
import os
import pwd
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from taxctl_base.processes import read_ready
from tests.deploy import install
from tests.helpers import Process, python_for
from tests.shop import INVOICE, Shop, http, wait_for

UNIT = "/etc/systemd/system/taxctl-syncd.service"
ABSENT = "/dev/taxctl/printer-A1B2C3"  # the example config's till-1: not plugged in


def service(root: Path) -> configparser.SectionProxy:
    parser = configparser.RawConfigParser(strict=False, delimiters=("="))
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    parser.read(root / UNIT.lstrip("/"))
    return parser["Service"]


# --- the documented install -----------------------------------------------------------------


def test_the_documented_block_installs_every_packaged_file_and_only_those() -> None:
    _, steps = install.documented()
    sources = {step.source for step in steps}
    assert install.packaged() - sources == set(), "packaged but not in operating.md's install"
    assert sources - install.packaged() - {"docs/operating.md"} == set()
    assert len({step.dest for step in steps}) == len(steps)


def test_every_documented_file_is_installed_with_its_mode(installed: Path) -> None:
    _, steps = install.documented()
    for step in steps:
        dest = installed / step.dest.lstrip("/")
        assert dest.read_bytes() == (install.REPO / step.source).read_bytes(), step
        assert dest.stat().st_mode & 0o7777 == step.mode, step
    # the dynamic user owns nothing in /etc: the config must be world-readable
    config = next(s for s in steps if s.dest == "/etc/taxctl/syncd.toml")
    assert config.mode & 0o004


def test_the_parser_refuses_a_line_that_could_write_outside_the_root() -> None:
    with pytest.raises(AssertionError, match="DESTDIR"):
        install.steps("install -D -m 0644 packaging/syncd.toml /etc/taxctl/syncd.toml\n")
    with pytest.raises(AssertionError):
        install.steps('cp packaging/syncd.toml "$DESTDIR"/etc/taxctl/\n')


# --- systemd's view of the installed unit ---------------------------------------------------


def _systemd_root(root: Path) -> None:
    """What `systemd-analyze verify --root` looks up besides the unit: the system's units
    (targets the unit pulls in), the binaries of its Exec lines."""
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "usr/bin").mkdir(parents=True, exist_ok=True)
    if not (root / "bin").exists():
        (root / "bin").symlink_to("usr/bin")  # merged /usr, as Debian 12 has it
    # the program step of the install (pip) is not run here: any executable stands in
    for line, stand_in in (("ExecStart", "/bin/true"), ("ExecReload", None)):
        binary = shlex.split(service(root)[line])[0]
        target = root / binary.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(stand_in or shutil.which(Path(binary).name) or binary, target)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd is not installed")
def test_systemd_analyze_verifies_the_installed_unit(installed: Path) -> None:
    if not Path("/usr/lib/systemd/system/sysinit.target").exists():
        pytest.skip("no system units to verify against (/usr/lib/systemd/system)")
    _systemd_root(installed)
    done = subprocess.run(
        ["systemd-analyze", "verify", f"--root={installed}", "taxctl-syncd.service"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


# --- syncd as the unit's user, from the installed files -------------------------------------


@dataclass
class Running:
    shop: Shop
    root: Path
    syncd: Process
    uid: int
    groups: list[int]


def _fresh_id() -> int:
    """A uid and gid no user or group has, in DynamicUser='s range."""
    for candidate in range(61184, 65520):
        try:
            pwd.getpwuid(candidate)
            continue
        except KeyError:
            pass
        try:
            grp.getgrgid(candidate)
        except KeyError:
            return candidate
    raise AssertionError("no free id in 61184-65519")


def _edit_config(path: Path, chain_url: str, port: Path) -> None:
    """What the operator does after installing: chain URLs, the printer's port, and here
    port 0 for the API. Each edit must hit exactly one line of the example."""
    text = path.read_text()
    edits = [
        (r"^urls = \[.*\]$", f'urls = ["{chain_url}"]'),
        (r'^listen = "127\.0\.0\.1:8631"$', 'listen = "127.0.0.1:0"'),
        (r'^port = "/dev/serial/by-id/[^"]+"$', f'port = "{port}"'),
    ]
    for pattern, replacement in edits:
        text, count = re.subn(pattern, replacement, text, flags=re.M)
        assert count == 1, pattern
    path.write_text(text)  # the same file: its installed mode stays


def _udev_group_and_mode(root: Path) -> tuple[int, int]:
    """GROUP= and MODE= the installed rule gives a printer's node."""
    text = (root / "etc/udev/rules.d/99-taxctl-printer.rules").read_text()
    group = set(re.findall(r'GROUP="(\w+)"', text))
    mode = set(re.findall(r'MODE="(0[0-7]{3})"', text))
    assert len(group) == 1 and len(mode) == 1, (group, mode)
    return grp.getgrnam(group.pop()).gr_gid, int(mode.pop(), 8)


def _start_syncd(
    root: Path, unit: configparser.SectionProxy, uid: int, groups: list[int]
) -> Process:
    found = python_for(_setpriv(uid, groups, unit), install.REPO)
    if found is None:
        pytest.skip("no interpreter a fresh uid can run (the venv is under a private home)")
    python, pythonpath = found
    argv = shlex.split(unit["ExecStart"])
    binary = root / argv[0].lstrip("/")  # the program step of the install, for this tree
    binary.parent.mkdir(parents=True, exist_ok=True)
    binary.write_text(f'#!/bin/sh\nPYTHONPATH={pythonpath} exec {python} -m taxctl "$@"\n')
    binary.chmod(0o755)
    argv = [
        str(binary),
        *(str(root / a.lstrip("/")) if a.startswith("/etc/") else a for a in argv[1:]),
    ]
    state = root / "var/lib" / unit["StateDirectory"]
    state.mkdir(parents=True)
    os.chown(state, uid, uid)
    state.chmod(int(unit["StateDirectoryMode"], 8))
    env = {"PATH": "/usr/bin:/bin", "STATE_DIRECTORY": str(state)}
    with open(root / "syncd.log", "wb") as log:
        proc = subprocess.Popen(
            [*_setpriv(uid, groups, unit), *argv],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
            umask=int(unit["UMask"], 8),
        )
    ready = read_ready(proc, 60)
    if ready is None:
        proc.kill()
        proc.wait(10)
        raise AssertionError((root / "syncd.log").read_text())
    return Process(proc, ready)


def _setpriv(uid: int, groups: list[int], unit: configparser.SectionProxy) -> list[str]:
    setpriv = shutil.which("setpriv")
    assert setpriv
    drop = [setpriv, f"--reuid={uid}", f"--regid={uid}", f"--groups={','.join(map(str, groups))}"]
    if unit.get("NoNewPrivileges") == "yes":
        drop.append("--no-new-privs")
    return drop


@pytest.fixture(scope="module")
def running() -> Iterator[Running]:
    if os.geteuid() != 0:
        pytest.skip("needs root to run syncd as another user")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    with install.open_dir() as where:
        base = Path(where)
        root = base / "root"
        install.run(root)
        unit = service(root)
        names = unit["SupplementaryGroups"].split()
        groups = [grp.getgrnam(name).gr_gid for name in names]
        shop = Shop(base)
        try:
            shop.start_chain()
            shop.start_device("printer")
            node = os.path.realpath(shop.link("printer"))
            gid, mode = _udev_group_and_mode(root)
            os.chown(node, -1, gid)  # what the udev rule does to a real adapter's node
            os.chmod(node, mode)
            _edit_config(root / "etc/taxctl/syncd.toml", shop.chain_url, shop.link("printer"))
            uid = _fresh_id()
            shop.syncd = _start_syncd(root, unit, uid, groups)
            shop.api = shop.syncd.ready["url"]
            yield Running(shop, root, shop.syncd, uid, groups)
        finally:
            shop.stop_all()


def _till(running: Running, name: str) -> dict[str, object]:
    return next(d for d in running.shop.status()["devices"] if d.get("name") == name)


def test_syncd_runs_as_the_units_user_and_groups(running: Running) -> None:
    status = Path(f"/proc/{running.syncd.proc.pid}/status").read_text()
    uids = re.search(r"^Uid:\s+(.*)$", status, re.M)
    groups = re.search(r"^Groups:\s*(.*)$", status, re.M)
    assert uids and groups
    assert set(uids.group(1).split()) == {str(running.uid)}
    assert sorted(map(int, groups.group(1).split())) == sorted(running.groups)
    assert "NoNewPrivs:\t1" in status


def test_syncd_reads_the_installed_config_and_reaches_the_printer(running: Running) -> None:
    wait_for(lambda: _till(running, "till-2")["state"] == "online", 30, "till-2 online")
    till_1 = _till(running, "till-1")
    assert till_1["state"] != "online" and till_1["port"] == ABSENT


def test_the_state_directory_works(running: Running) -> None:
    wait_for(lambda: _till(running, "till-2")["state"] == "online", 30, "till-2 online")
    status, body = running.shop.issue(
        {**INVOICE, "device": "till-2"}, {"Idempotency-Key": "deploy-1"}
    )
    assert status == 201, body
    again, same = running.shop.issue(
        {**INVOICE, "device": "till-2"}, {"Idempotency-Key": "deploy-1"}
    )
    assert (again, same["counter"]) == (200, body["counter"])
    state = running.root / "var/lib/taxctl-syncd"
    files = sorted(p for p in state.iterdir())
    assert state / "idempotency.sqlite" in files
    for path in [state, *files]:
        info = path.stat()
        assert info.st_uid == running.uid, path
        assert info.st_mode & 0o077 == 0, path  # UMask=0077, StateDirectoryMode=0700


def _promtool(text: str) -> tuple[int, str]:
    done = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    return done.returncode, done.stdout + done.stderr


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (prometheus) is not installed"
)
def test_metrics_are_promtool_clean_and_show_the_absent_printer_down(running: Running) -> None:
    till_2 = wait_for(
        lambda: (d := _till(running, "till-2"))["state"] == "online" and d, 30, "till-2"
    )
    status, text, _ = http("GET", f"{running.shop.api}/metrics")
    assert status == 200
    assert _promtool(str(text)) == (0, "")
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(str(text))
        for s in family.samples
    }
    absent = {"device": "till-1"}
    assert samples[("taxctl_syncd_link_up", frozenset({**absent, "port": ABSENT}.items()))] == 0
    assert samples[("taxctl_syncd_can_issue", frozenset(absent.items()))] == 0
    present = {"device": str(till_2["device_id"]), "port": str(running.shop.link("printer"))}
    assert samples[("taxctl_syncd_link_up", frozenset(present.items()))] == 1
