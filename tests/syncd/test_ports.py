"""`taxctl ports`: what the system knows of each port, and a named port that is not there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from serial.tools import list_ports
from serial.tools.list_ports_common import ListPortInfo

from syncd import cli as syncd_cli
from taxctl.cli import main
from taxctl_base import exits
from tests.helpers import run_taxctl


def adapter(device: str) -> ListPortInfo:
    """An FTDI adapter as pyserial describes one, on a node nothing answers."""
    info = ListPortInfo(device, skip_link_detection=True)
    info.description = "FT232R USB UART"
    info.vid, info.pid = 0x0403, 0x6001
    info.serial_number = "A10K1234"
    info.hwid = "USB VID:PID=0403:6001 SER=A10K1234 LOCATION=1-1:1.0"
    return info


@pytest.fixture
def one_adapter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    node = tmp_path / "ttyUSB7"
    node.write_bytes(b"")  # a file, not a tty: probing it fails, as for a silent port
    by_id = tmp_path / "by-id"
    by_id.mkdir()
    (by_id / "usb-FTDI_FT232R_USB_UART_A10K1234-if00-port0").symlink_to(node)
    monkeypatch.setattr(list_ports, "comports", lambda: [adapter(str(node))])
    monkeypatch.setattr(syncd_cli, "BY_ID", by_id)
    return node


def test_json_carries_description_usb_ids_serial_and_by_id_name(
    one_adapter: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ports", "--json", "--timeout", "0.1"]) == exits.OK
    [entry] = json.loads(capsys.readouterr().out)
    assert entry["port"] == str(one_adapter)
    assert entry["device_id"] is None
    assert {k: entry[k] for k in ("description", "vid", "pid", "serial_number", "by_id")} == {
        "description": "FT232R USB UART",
        "vid": "0403",
        "pid": "6001",
        "serial_number": "A10K1234",
        "by_id": str(one_adapter.parent / "by-id/usb-FTDI_FT232R_USB_UART_A10K1234-if00-port0"),
    }
    assert entry["hwid"].startswith("USB VID:PID=0403:6001")


def test_text_line_shows_them_too(one_adapter: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ports", "--timeout", "0.1"]) == exits.OK
    [line] = capsys.readouterr().out.splitlines()
    assert line.startswith(f"{one_adapter}  no device (")
    assert line.endswith(
        "FT232R USB UART  0403:6001  serial A10K1234  "
        f"{one_adapter.parent}/by-id/usb-FTDI_FT232R_USB_UART_A10K1234-if00-port0"
    )


def test_a_named_port_that_does_not_exist_exits_port_gone(tmp_path: Path) -> None:
    missing = tmp_path / "printer-A10K1234"
    out = run_taxctl("ports", str(missing))
    assert out.returncode == exits.PORT_GONE == 6
    assert out.stderr == f"taxctl ports: {missing}: no such port\n"
    assert out.stdout == ""


def test_status_shows_a_printer_not_reached_yet_without_none(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A configured printer syncd has never reached has no id, counter or sync point yet:
    the table printed 'None None' for them."""
    import io

    answer = {
        "chain": {"state": "ok", "url": "http://chain:1", "error": None},
        "pending": 0,
        "rejected": 0,
        "devices": [
            {
                "device_id": None,
                "name": "front till",
                "port": "/dev/taxctl/printer-A1",
                "state": "offline",
                "counter": None,
                "synced_through": None,
                "pending": None,
                "offline_since": None,
            }
        ],
    }

    def urlopen(url: str, timeout: float) -> io.BytesIO:
        return io.BytesIO(json.dumps(answer).encode())

    monkeypatch.setattr(syncd_cli.urllib.request, "urlopen", urlopen)
    assert main(["syncd", "status", "--api", "127.0.0.1:1"]) == exits.OK
    out = capsys.readouterr().out
    assert "None" not in out
    row = out.splitlines()[-1].split()
    assert row[:2] == ["front", "till"] and row[2:] == [
        "/dev/taxctl/printer-A1",
        "offline",
        "-",
        "-",
        "0",
        "-",
    ]
