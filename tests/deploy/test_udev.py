"""The installed udev rules, run by `udevadm test` on a fake sysfs holding an FTDI, a CH340,
a PL2303 and a CP210x adapter: an add event, then a change (what `udevadm trigger` sends),
must each leave /dev/taxctl/printer-... and the ModemManager opt-out in place."""

from __future__ import annotations

import grp
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy import fakesys, install, udev
from tests.deploy.fakesys import ADAPTERS, Adapter

WHY_NOT = udev.why_not()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=str(WHY_NOT))


def expected_link(adapter: Adapter) -> str:
    """FTDI by its USB serial number; the others by the USB port path (no serial, or a
    factory serial many boards share)."""
    name = adapter.serial if adapter.name == "FTDI" else adapter.path_tag
    return f"/dev/taxctl/printer-{name}"


@dataclass
class Run:
    sysfs: Path
    events: dict[tuple[str, str], udev.Event]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    where = tmp_path_factory.mktemp("udev")
    root = where / "root"
    install.run(root)  # the rules as operating.md installs them
    fakesys.build(where / "sys", ADAPTERS)
    (where / "out").mkdir()
    steps = [(action, a.tty_device) for a in ADAPTERS for action in ("add", "change")]
    steps += [(action, a.usb_device) for a in ADAPTERS for action in ("add", "change")]
    ran = udev.run_events(where / "sys", root / "etc/udev/rules.d", where / "out", steps)
    return Run(where / "sys", {(e.action, e.devpath): e for e in ran})


def rule_log(event: udev.Event, rule: str) -> list[str]:
    return [line for line in event.log.splitlines() if f"/{rule}:" in line]


@pytest.mark.parametrize("action", ["add", "change"])
@pytest.mark.parametrize("adapter", ADAPTERS, ids=[a.name for a in ADAPTERS])
def test_the_printer_gets_its_link_and_modemmanager_keeps_off(
    run: Run, adapter: Adapter, action: str
) -> None:
    event = run.events[(action, adapter.tty_device)]
    link = expected_link(adapter)
    ours = rule_log(event, "99-taxctl-printer.rules")  # what our rule did, for a failure
    assert link in event.properties.get("DEVLINKS", "").split(), (event.properties, ours)
    assert event.properties.get("ID_MM_DEVICE_IGNORE") == "1", (event.properties, ours)
    assert event.properties.get("ID_PATH_TAG") == adapter.path_tag
    # the link udevadm made in the namespace's /dev, pointing at this adapter's node
    assert event.links.get(link) == f"../ttyUSB{adapter.tty}", event.links
    assert any(line.endswith(f"GROUP {grp.getgrnam('dialout').gr_gid}") for line in ours), ours
    assert any(line.endswith("MODE 0660") for line in ours), ours


def test_no_two_adapters_share_a_link(run: Run) -> None:
    links = {expected_link(a) for a in ADAPTERS}
    assert len(links) == len(ADAPTERS)
    last = run.events[("change", ADAPTERS[-1].usb_device)]
    assert {p for p in last.links if p.startswith("/dev/taxctl/")} == links


@pytest.mark.parametrize("adapter", ADAPTERS, ids=[a.name for a in ADAPTERS])
def test_autosuspend_is_off_for_the_adapter(run: Run, adapter: Adapter) -> None:
    for action in ("add", "change"):
        ours = rule_log(run.events[(action, adapter.usb_device)], "99-taxctl-usb-power.rules")
        assert any(line.endswith("/power/control' writing 'on'") for line in ours), ours
    assert (run.sysfs / adapter.usb_device / "power/control").read_text() == "on"
    # the tty events leave the USB device's power alone (the rule is for usb_device only)
    assert not rule_log(run.events[("add", adapter.tty_device)], "99-taxctl-usb-power.rules")
