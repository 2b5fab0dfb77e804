"""`udevadm test` on a fake sysfs, in a private mount namespace.

systemd 252's `udevadm test` takes no sysfs or rules directory: it reads /sys and the
rules directories. So the events run under `unshare --mount`, where the fake tree is
bind-mounted over /sys, the installed rules directory over /etc/udev/rules.d, and tmpfs
over /run (the udev database) and /dev (udevadm test creates the device links for real).
Nothing leaks out: the namespace and its mounts die with the shell.
SYSTEMD_DEVICE_VERIFY_SYSFS=0 lets sd-device accept a /sys that is not a sysfs mount
(the same switch systemd's own udev tests use).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SCRIPT = r"""
set -eu
sys=$1 rules=$2 out=$3
shift 3
mount --bind "$sys" /sys
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /dev
mount --bind "$rules" /etc/udev/rules.d
i=0
for step in "$@"; do
    action=${step%%:*}
    devpath=${step#*:}
    udevadm test --action="$action" "$devpath" >"$out/$i.properties" 2>"$out/$i.log" ||
        echo $? >"$out/$i.failed"
    find /dev -type l -printf '%p %l\n' >"$out/$i.links"
    i=$((i + 1))
done
"""


@dataclass
class Event:
    action: str
    devpath: str
    properties: dict[str, str]
    links: dict[str, str]  # every symlink under /dev after the event: path -> target
    log: str


def why_not() -> str | None:
    """Why udevadm test cannot run here, or None."""
    for tool in ("udevadm", "unshare", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if os.geteuid() != 0:
        return "needs root for a mount namespace"
    if not Path("/etc/udev/rules.d").is_dir():
        return "no /etc/udev/rules.d to mount the installed rules over"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    if probe.returncode != 0:
        return f"cannot make a mount namespace: {probe.stderr.strip()}"
    return None


def run_events(sysfs: Path, rules: Path, out: Path, steps: list[tuple[str, str]]) -> list[Event]:
    """Run `udevadm test --action=A /sys/DEVPATH` for each (A, DEVPATH), in order, in one
    namespace, so a change event sees the database the add event left."""
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", SCRIPT, "udev"]
    argv += [str(sysfs), str(rules), str(out), *[f"{a}:/sys/{p}" for a, p in steps]]
    env = {**os.environ, "SYSTEMD_DEVICE_VERIFY_SYSFS": "0", "SYSTEMD_LOG_LEVEL": "debug"}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    events = []
    for i, (action, devpath) in enumerate(steps):
        log = (out / f"{i}.log").read_text()
        assert not (out / f"{i}.failed").exists(), log
        events.append(Event(action, devpath, _properties(out / f"{i}.properties"), {}, log))
        for line in (out / f"{i}.links").read_text().splitlines():
            path, _, target = line.partition(" ")
            events[-1].links[path] = target
    return events


def _properties(path: Path) -> dict[str, str]:
    """The KEY=value lines udevadm test prints last, on standard output."""
    out = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.replace("_", "").replace(".", "").isalnum():
            out[key] = value
    return out
