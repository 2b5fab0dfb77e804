"""`taxctl device ...` as a user runs it, against a device process on a pty."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from device.protocol.status import Status
from device.transport import FdPort, PortError, open_serial
from tests.device.conftest import INVOICE
from tests.helpers import Process, export_documents, pycose_verify, run_taxctl, spawn

taxctl = run_taxctl


@pytest.fixture
def device(tmp_path: Path) -> Iterator[tuple[Process, Path]]:
    proc = spawn(
        [
            "device",
            "run",
            "--state",
            str(tmp_path / "state"),
            "--link",
            str(tmp_path / "tty"),
            "--training",
        ]
    )
    yield proc, tmp_path
    proc.stop()


def test_info_issue_export(device: tuple[Process, Path]) -> None:
    proc, tmp = device
    link, state = str(tmp / "tty"), tmp / "state"
    info = json.loads(taxctl("device", "info", "--port", link).stdout)
    assert info["device_id"] == proc.ready["device_id"]
    public_key = bytes.fromhex(info["public_key"])
    assert len(public_key) == 32 and info["training"] and info["registered"]
    request = tmp / "invoice.json"
    request.write_text(json.dumps(INVOICE))
    issued = taxctl("device", "issue", "--port", link, "--invoice", str(request))
    assert issued.returncode == 0, issued.stderr
    assert issued.stderr == ""
    out = json.loads(issued.stdout)
    assert {"counter", "code", "number", "check_code", "cose_sign1"} <= set(out)
    payload = pycose_verify(base64.b64decode(out["cose_sign1"]), public_key)
    assert payload["check_code"] == out["check_code"] and payload["counter"] == 1
    # the old spelling still works, with a one-line notice on stderr
    from_stdin = taxctl("device", "issue", "--port", link, "--json", "-", stdin=json.dumps(INVOICE))
    assert json.loads(from_stdin.stdout)["counter"] == 2
    assert from_stdin.stderr.splitlines() == [
        "taxctl device issue: --json FILE is deprecated, use --invoice FILE"
    ]
    live = export_documents(state)  # a consistent snapshot while the device runs
    assert [r["counter"] for r in live] == [1, 2] and live[0]["code"] == out["code"]
    status = json.loads(taxctl("device", "status", "--port", link).stdout)
    assert status["counter"] == 2 and status["unsynced_count"] == 2
    assert proc.stop() == 0
    stopped = export_documents(state)
    assert [r["raw"] for r in stopped] == [r["raw"] for r in live]


def test_refusal_exit_codes_and_messages(device: tuple[Process, Path]) -> None:
    _, tmp = device
    link = str(tmp / "tty")
    request = tmp / "invoice.json"
    request.write_text(json.dumps(INVOICE))
    assert taxctl("device", "control", "--port", link, "--paper-out", "on").returncode == 0
    refused = taxctl("device", "issue", "--port", link, "--invoice", str(request))
    assert refused.returncode == 1
    assert "PAPER_OUT" in refused.stderr and "out of paper" in refused.stderr
    assert json.loads(refused.stdout)["error"] == Status.PAPER_OUT.name
    bad = tmp / "bad.json"
    bad.write_text("{not json")
    assert taxctl("device", "issue", "--port", link, "--invoice", str(bad)).returncode == 2
    both = taxctl("device", "issue", "--port", link, "--invoice", str(request), "--json", "-")
    assert both.returncode == 2 and "not allowed with" in both.stderr
    missing = taxctl("device", "info", "--port", str(tmp / "no-such-port"))
    assert missing.returncode == 3 and "no serial port" in missing.stderr


def test_state_directory_rules(tmp_path: Path) -> None:
    fresh = taxctl("device", "run", "--state", str(tmp_path / "s"), "--link", str(tmp_path / "t"))
    assert fresh.returncode == 4 and "--training" in fresh.stderr
    proc = spawn(
        [
            "device",
            "run",
            "--state",
            str(tmp_path / "s"),
            "--link",
            str(tmp_path / "t"),
            "--training",
        ]
    )
    assert proc.stop() == 0
    assert (tmp_path / "s" / "device.key").stat().st_mode & 0o077 == 0
    other = taxctl(
        "device",
        "run",
        "--state",
        str(tmp_path / "s"),
        "--link",
        str(tmp_path / "t"),
        "--bureau-key",
        "00" * 32,
    )
    assert other.returncode == 4 and "different tax bureau key" in other.stderr
    (tmp_path / "s" / "device.key").chmod(0o644)
    leaked = taxctl("device", "run", "--state", str(tmp_path / "s"), "--link", str(tmp_path / "t"))
    assert leaked.returncode == 4 and "readable by group or others" in leaked.stderr
    assert not (tmp_path / "t").exists()  # a clean stop removed the link


def test_a_second_printer_on_the_same_state_is_refused(device: tuple[Process, Path]) -> None:
    proc, tmp_path = device
    second = taxctl(
        "device",
        "run",
        "--state",
        str(tmp_path / "state"),
        "--link",
        str(tmp_path / "tty2"),
        "--training",
    )
    assert second.returncode == 4
    assert f"in use by another device process (pid {proc.proc.pid})" in second.stderr
    assert not (tmp_path / "tty2").exists()
    info = json.loads(taxctl("device", "info", "--port", str(tmp_path / "tty")).stdout)
    assert info["device_id"]  # the first one is still serving


def test_export_of_a_missing_state_says_so(tmp_path: Path) -> None:
    result = taxctl("device", "export", "--state", str(tmp_path / "nothing"))
    assert result.returncode == 4 and "no journal" in result.stderr


async def test_paced_port_sends_no_faster_than_the_line_rate(tmp_path: Path) -> None:
    from device.transport import create_pty

    port = create_pty(tmp_path / "tty", baud=96_000, pace=True)  # 9,600 bytes/s
    host = open_serial(str(tmp_path / "tty"))
    try:
        start = time.monotonic()
        port.write(bytes(1200))
        got = b""
        while len(got) < 1200 and time.monotonic() - start < 10:
            got += await asyncio.wait_for(host.read(), 10)
        assert got == bytes(1200)
        # 1,200 bytes at 9,600 bytes/s cannot arrive in less than 0.125 s
        assert time.monotonic() - start >= 0.1
    finally:
        host.close()
        port.close()


async def test_pyserial_url_without_a_descriptor_uses_a_thread() -> None:
    port = open_serial("loop://")
    assert not isinstance(port, FdPort)
    try:
        port.write(b"\x7eping\x7e")
        got = b""
        for _ in range(50):
            got += await asyncio.wait_for(port.read(), 5)
            if len(got) >= 6:
                break
        assert got == b"\x7eping\x7e"
    finally:
        port.close()


def test_opening_a_bad_port_explains_why(tmp_path: Path) -> None:
    with pytest.raises(PortError, match="no serial port"):
        open_serial(str(tmp_path / "ttyUSB9"))
    with pytest.raises(PortError, match="parity"):
        open_serial(str(tmp_path / "x"), parity="Q")


def test_receipt_reprint_in_every_format(device: tuple[Process, Path]) -> None:
    _, tmp = device
    link = str(tmp / "tty")
    request = tmp / "invoice.json"
    request.write_text(json.dumps(INVOICE))
    issued = json.loads(taxctl("device", "issue", "--port", link, "--invoice", str(request)).stdout)
    text = taxctl("device", "receipt", "--port", link, "--counter", "1", "--paper", "58")
    assert text.returncode == 0 and issued["check_code"][-5:] in text.stdout
    assert "TRAINING - NOT A VALID INVOICE" in text.stdout
    for fmt, magic in (("png", b"\x89PNG"), ("svg", b"<svg"), ("escpos", b"\x1b@")):
        out = tmp / f"receipt.{fmt}"
        result = taxctl(
            "device",
            "receipt",
            "--port",
            link,
            "--code",
            issued["code"],
            "--number",
            issued["number"],
            "--format",
            fmt,
            "--out",
            str(out),
        )
        assert result.returncode == 0, result.stderr
        assert out.read_bytes().startswith(magic)
    missing = taxctl("device", "receipt", "--port", link, "--counter", "99")
    assert missing.returncode == 1 and "RANGE_INVALID" in missing.stderr


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """`directory` as its process sees a read-only one. Root ignores permission bits, so
    for root the directory is made immutable instead (nothing created, removed or
    chmod-ed in it, whoever asks)."""
    if os.geteuid() != 0:
        directory.chmod(0o500)
        try:
            yield
        finally:
            directory.chmod(0o700)
        return
    made = subprocess.run(["chattr", "+i", str(directory)], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot make a directory read-only for root here: {made.stderr!r}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


@pytest.mark.parametrize("personalised", [True, False])
def test_a_read_only_state_directory_is_refused_in_one_line(
    tmp_path: Path, personalised: bool
) -> None:
    state, link = tmp_path / "s", tmp_path / "t"
    run = ["device", "run", "--state", str(state), "--link", str(link), "--training"]
    if personalised:
        assert spawn(run).stop() == 0
    else:
        state.mkdir(mode=0o700)
    before = sorted(p.name for p in state.iterdir())
    with read_only(state):
        result = taxctl(*run)
    assert result.returncode == 4, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"taxctl device run: the state directory {state} cannot be used")
    assert sorted(p.name for p in state.iterdir()) == before
    assert not link.exists()


def test_a_printer_whose_port_goes_away_exits_port_gone(tmp_path: Path) -> None:
    """So that a supervisor with Restart=on-failure starts it again."""
    from taxctl_base import exits

    master, slave = os.openpty()
    path = os.ttyname(slave)
    os.close(slave)  # the printer opens the node itself, as it would a USB adapter
    proc = spawn(
        ["device", "run", "--state", str(tmp_path / "state"), "--port", path, "--training"]
    )
    try:
        os.close(master)  # the port disappears under the running printer
        assert proc.proc.wait(timeout=20) == exits.PORT_GONE == 6
    finally:
        proc.stop()


def test_a_stopped_printer_exits_0(device: tuple[Process, Path]) -> None:
    proc, _ = device
    assert proc.stop() == 0


@pytest.mark.parametrize("command", [["device", "run"], ["syncd", "run"], ["hostsim", "chain"], []])
def test_long_running_commands_print_the_version(command: list[str]) -> None:
    from taxctl import __version__

    out = taxctl(*command, "--version")
    assert (out.returncode, out.stdout) == (0, f"taxctl {__version__}\n")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--baud", "12"], "argument --baud: 12 is out of range: a baud rate is 50 to 4000000"),
        (["--baud", "fast"], 'argument --baud: not a whole number: "fast"'),
        (["--baud", "4000001"], "argument --baud: 4000001 is out of range"),
        (["--timeout", "0"], 'argument --timeout: "0" is out of range'),
        (["--timeout", "nan"], 'argument --timeout: "nan" is out of range'),
        (["--parity", "X"], "argument --parity: invalid choice"),
    ],
)
def test_serial_flags_out_of_range_are_refused_by_name(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from taxctl.cli import build_parser

    for command in (["device", "info", "--port", "x"], ["device", "run", "--state", "x"]):
        if "--timeout" in argv and command[1] == "run":
            continue  # the emulator answers; it waits for nobody
        with pytest.raises(SystemExit) as stopped:
            build_parser().parse_args([*command, *argv])
        assert stopped.value.code == 2
        assert message in capsys.readouterr().err


def test_serial_flags_accept_the_documented_range() -> None:
    from taxctl.cli import build_parser

    for baud in ("50", "9600", "115200", "4000000"):
        args = build_parser().parse_args(["device", "info", "--port", "x", "--baud", baud])
        assert args.baud == int(baud)
    args = build_parser().parse_args(["device", "info", "--port", "x", "--timeout", "2.5"])
    assert args.timeout == 2.5
    info = build_parser().parse_known_args(["device", "info", "--port", "x"])[0]
    assert (info.baud, info.parity, info.stopbits, info.rtscts) == (115200, "N", 1, False)


def test_every_serial_flag_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    from taxctl.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["device", "info", "--help"])
    out = capsys.readouterr().out
    for text in ("line speed, 50-4000000", "none, even, odd", "stop bits", "RTS/CTS", "seconds"):
        assert text in out


def test_a_port_nobody_answers_says_what_to_check(tmp_path: Path) -> None:
    """An empty port (printer off, wrong port) is no unknown outcome: the person is told to
    check power, cable, port path and baud, and an issuing command sent nothing that could
    issue (a STATUS goes first)."""
    master, slave = os.openpty()  # nobody reads the master side: a port with nothing on it
    try:
        port = os.ttyname(slave)
        request = tmp_path / "invoice.json"
        request.write_text(json.dumps(INVOICE))
        for command in (
            ["device", "info"],
            ["device", "issue", "--invoice", str(request)],
            ["device", "z-report"],
        ):
            out = taxctl(*command, "--port", port, "--timeout", "0.05")
            assert out.returncode == 3, out.stderr
            assert out.stderr.splitlines() == [
                f"taxctl device: nothing answers on {port}: check that the printer is switched"
                " on, its cable, the port path, and that the baud rate and parity match the"
                " printer's"
            ]
            assert "request id" not in out.stderr and out.stdout == ""
    finally:
        os.close(master)
        os.close(slave)


def test_no_answer_keeps_the_retry_advice_only_for_an_issuing_request() -> None:
    from device.client import NoAnswer

    silent = NoAnswer("/dev/ttyUSB0", 5, heard=False, issuing=False)
    assert "nothing answers on /dev/ttyUSB0" in str(silent) and "request id" not in str(silent)
    stopped = NoAnswer("/dev/ttyUSB0", 5, heard=True, issuing=False)
    assert "stopped answering" in str(stopped) and "request id" not in str(stopped)
    for heard in (False, True):
        issuing = NoAnswer("/dev/ttyUSB0", 5, heard=heard, issuing=True)
        assert "outcome unknown, retry with the same request id" in str(issuing)


def test_an_issuing_request_that_lost_its_answer_says_how_to_check() -> None:
    from device.cli import _link_message
    from device.client import NoAnswer

    lost = NoAnswer("/dev/ttyUSB0", 5, heard=True, issuing=True)
    text = _link_message(lost, "invoice")
    assert "the invoice may have been signed" in text and "taxctl device status" in text
    assert "request id" not in text  # each run of the CLI picks new ids
    assert _link_message(lost, None) == str(lost)


def test_permission_hint_never_suggests_joining_root() -> None:
    from device.transport import permission_hint

    root_only = permission_hint("/dev/ttyUSB0", 0o20600, "root")
    assert "SupplementaryGroups" not in root_only and "join" in root_only
    assert "mode 0600, group root" in root_only
    assert 'packaging/udev/99-taxctl-printer.rules (GROUP="dialout", MODE="0660")' in root_only
    # group root even with group access: joining root is no fix either
    assert "SupplementaryGroups" not in permission_hint("/dev/ttyUSB0", 0o20660, "root")
    # a 0600 node of group dialout: dialout has no access, joining it does not help
    assert "SupplementaryGroups" not in permission_hint("/dev/ttyUSB0", 0o20600, "dialout")
    dialout = permission_hint("/dev/ttyUSB0", 0o20660, "dialout")
    assert "add the user to the 'dialout' group" in dialout
    assert "SupplementaryGroups=dialout" in dialout
