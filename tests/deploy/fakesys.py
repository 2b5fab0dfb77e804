"""A fake sysfs holding USB-serial adapters, laid out as the kernel lays out a real one.

`udevadm test` reads the device, its parents and their attributes from /sys; a test
bind-mounts this tree over /sys in a private mount namespace (tests/deploy/udev.py),
so the real rules, builtins (usb_id, path_id, hwdb) and our rule run on it unchanged.
The symlinks are absolute paths under /sys, which resolve once the tree is mounted there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PCI = "devices/pci0000:00/0000:00:14.0"  # an xHCI controller: bus 1 is behind it


@dataclass(frozen=True)
class Adapter:
    name: str
    vendor: str
    product: str
    driver: str
    maker: str
    model: str
    serial: str | None  # CH340 and most PL2303 have no serial number
    usb_port: int  # the root hub's port it is plugged into: 1-<usb_port>
    tty: int  # ttyUSB<tty>

    @property
    def usb_device(self) -> str:
        """The USB device's sysfs path, relative to /sys."""
        return f"{PCI}/usb1/1-{self.usb_port}"

    @property
    def tty_device(self) -> str:
        """The tty's sysfs path, relative to /sys."""
        interface = f"{self.usb_device}/1-{self.usb_port}:1.0"
        return f"{interface}/ttyUSB{self.tty}/tty/ttyUSB{self.tty}"

    @property
    def path_tag(self) -> str:
        """ID_PATH_TAG as path_id makes it: the controller, then the USB port path."""
        return f"pci-0000_00_14_0-usb-0_{self.usb_port}_1_0"


ADAPTERS = [
    Adapter("FTDI", "0403", "6001", "ftdi_sio", "FTDI", "FT232R USB UART", "A10K1234", 1, 0),
    Adapter("CH340", "1a86", "7523", "ch341", "QinHeng", "USB Serial", None, 2, 1),
    Adapter("PL2303", "067b", "2303", "pl2303", "Prolific", "USB-Serial", None, 3, 2),
    Adapter("CP210x", "10c4", "ea60", "cp210x", "Silicon Labs", "CP2102 USB", "0001", 4, 3),
]


def _file(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def _link(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)


def _attributes(where: Path, values: dict[str, str]) -> None:
    for key, value in values.items():
        _file(where / key, value)


def build(root: Path, adapters: list[Adapter]) -> None:
    """Write the tree for `adapters` under `root` (mounted as /sys later)."""
    for bus in ("bus/usb", "bus/pci", "bus/usb-serial", "class/tty", "dev/char"):
        (root / bus).mkdir(parents=True, exist_ok=True)
    pci = root / PCI
    _attributes(pci, {"vendor": "0x8086", "device": "0xa36d", "uevent": "DRIVER=xhci_hcd"})
    _link(pci / "subsystem", "/sys/bus/pci")
    for adapter in adapters:
        _adapter(root, adapter)


def _adapter(root: Path, a: Adapter) -> None:
    usb = root / a.usb_device
    product = f"{int(a.vendor, 16):x}/{int(a.product, 16):x}/100"
    uevent = f"DEVTYPE=usb_device\nDRIVER=usb\nPRODUCT={product}\nBUSNUM=001\nDEVNUM=00{a.usb_port}"
    ids = {"idVendor": a.vendor, "idProduct": a.product, "bcdDevice": "0100"}
    names = {"manufacturer": a.maker, "product": a.model, "busnum": "1", "devpath": "1"}
    _attributes(usb, {**ids, **names, "uevent": uevent})
    # empty, not "auto": udevadm writes into a regular file without truncating it
    _attributes(usb / "power", {"autosuspend_delay_ms": "2000"})
    (usb / "power" / "control").touch()
    if a.serial is not None:
        _file(usb / "serial", a.serial)
    _link(usb / "subsystem", "/sys/bus/usb")
    interface = usb / f"1-{a.usb_port}:1.0"
    iface_uevent = f"DEVTYPE=usb_interface\nDRIVER={a.driver}\nPRODUCT={product}"
    numbers = {"bInterfaceNumber": "00", "bInterfaceClass": "ff", "bAlternateSetting": " 0"}
    _attributes(interface, {**numbers, "bInterfaceSubClass": "ff", "uevent": iface_uevent})
    _link(interface / "subsystem", "/sys/bus/usb")
    port = interface / f"ttyUSB{a.tty}"
    _attributes(port, {"uevent": f"DRIVER={a.driver}", "port_number": "0"})
    _link(port / "subsystem", "/sys/bus/usb-serial")
    tty = root / a.tty_device
    dev = f"188:{a.tty}"
    _attributes(tty, {"dev": dev, "uevent": f"MAJOR=188\nMINOR={a.tty}\nDEVNAME=ttyUSB{a.tty}"})
    _link(tty / "subsystem", "/sys/class/tty")
    _link(root / "class/tty" / f"ttyUSB{a.tty}", f"/sys/{a.tty_device}")
    _link(root / "dev/char" / dev, f"/sys/{a.tty_device}")
