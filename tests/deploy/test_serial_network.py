"""operating.md's serial-over-network recipes, run against a printer on a pty: ser2net's
RFC 2217 (its configuration taken from the document), and the socat commands."""

from __future__ import annotations

import grp
import json
import os
import shlex
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.install import OPERATING
from tests.helpers import run_taxctl
from tests.shop import Shop

DOC_PRINTER = "/dev/taxctl/printer-A10K1234"  # the path the recipes name


def doc_block(marker: str, fence: str) -> str:
    lines = OPERATING.read_text(encoding="utf-8").splitlines()
    [mark] = [i for i, line in enumerate(lines) if line.startswith(marker)]
    assert lines[mark + 1] == fence
    return "\n".join(lines[mark + 2 : lines.index("```", mark + 2)]) + "\n"


def doc_command(program: str, word: str) -> list[str]:
    """The one `program ...` line of operating.md that contains `word`."""
    text = OPERATING.read_text(encoding="utf-8")
    found = [line for line in text.splitlines() if line.startswith(f"{program} ") and word in line]
    assert len(found) == 1, found
    return shlex.split(found[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text(errors="replace")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}: {log.read_text(errors='replace')}")


class Background:
    """Helper processes, ended (by pid) when the test ends."""

    def __init__(self, where: Path) -> None:
        self.where = where
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], name: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.where / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self.procs.append(proc)
        return proc, log

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def printer(tmp_path: Path) -> Iterator[tuple[Shop, str]]:
    shop = Shop(tmp_path)
    try:
        device = shop.start_device("printer")
        yield shop, str(device.ready["device_id"])
    finally:
        shop.stop_all()


@pytest.fixture
def background(tmp_path: Path) -> Iterator[Background]:
    helpers = Background(tmp_path)
    try:
        yield helpers
    finally:
        helpers.stop()


def info(port: str) -> subprocess.CompletedProcess[str]:
    return run_taxctl("device", "info", "--port", port, timeout=60)


def device_id(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["device_id"])


@pytest.mark.skipif(shutil.which("ser2net") is None, reason="ser2net is not installed")
def test_ser2net_rfc2217_reaches_the_printer_with_ign_set_control(
    printer: tuple[Shop, str], background: Background, tmp_path: Path
) -> None:
    shop, expected = printer
    port = free_port()
    config = doc_block("<!-- ser2net-config", "```yaml")
    assert "tcp,7411" in config and DOC_PRINTER in config
    config = config.replace("tcp,7411", f"tcp,127.0.0.1,{port}")  # loopback only, in a test
    config = config.replace(DOC_PRINTER, str(shop.link("printer")))
    (tmp_path / "ser2net.yaml").write_text(config)
    # -n: stay in the foreground; -u: no UUCP lock files in the system's lock directory
    argv = [
        "ser2net",
        "-n",
        "-u",
        "-c",
        str(tmp_path / "ser2net.yaml"),
        "-P",
        str(tmp_path / "pid"),
    ]
    proc, log = background.start(argv, "ser2net")
    wait_listening(port, proc, log)

    url = f"rfc2217://127.0.0.1:{port}"
    assert device_id(info(f"{url}?ign_set_control")) == expected
    started = time.monotonic()
    refused = info(url)
    assert time.monotonic() - started < 30  # pyserial's option timeout, not a hang
    assert refused.returncode == 3, refused.stderr
    assert refused.stderr.splitlines() == [
        f"taxctl device: cannot open {url}: the RFC 2217 server did not confirm the flow and"
        " modem control settings (no modem control on its line?): add ?ign_set_control to"
        " the URL"
    ]
    # ser2net served both and still does
    assert device_id(info(f"{url}?ign_set_control")) == expected


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")
def test_socat_exports_a_port_over_tcp_and_makes_a_pty_of_a_tcp_server(
    printer: tuple[Shop, str], background: Background, tmp_path: Path
) -> None:
    shop, expected = printer
    port = free_port()
    # the printer's PC: its port on TCP
    export = doc_command("socat", "tcp-listen:")
    export = [
        w.replace("7000", str(port)).replace(DOC_PRINTER, str(shop.link("printer"))) for w in export
    ]
    proc, log = background.start(export, "socat-export")
    wait_listening(port, proc, log)
    assert device_id(info(f"socket://127.0.0.1:{port}")) == expected

    # syncd's PC: a device path for a raw TCP serial server (here, the export above)
    link = tmp_path / "taxctl-printer-1"
    client = doc_command("socat", "pty,link=")
    client = [
        w.replace("/run/taxctl-printer-1", str(link)).replace(
            "serial-box:4001", f"127.0.0.1:{port}"
        )
        for w in client
    ]
    proc, log = background.start(client, "socat-pty")
    deadline = time.monotonic() + 10
    while not link.exists():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    node = os.stat(link)
    assert stat.S_IMODE(node.st_mode) == 0o660
    assert grp.getgrgid(node.st_gid).gr_name == "dialout"  # syncd's group may open it
    assert device_id(info(str(link))) == expected
