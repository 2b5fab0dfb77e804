"""`taxctl syncd register`'s enrolment code: from the flag or `registration.enrolment_code`
in the config file, checked for its form before anything talks to the printer or chain;
registration hands it to the chain and asks the printer to sign its segment request."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from syncd.chainport import Registration
from syncd.cli import _enrolment_code
from syncd.registration import RegistrationError, check_enrolment_code, register_device
from tests.helpers import run_taxctl

CODE = "ENR-7K2M-Q9XD-4HBN-WR3T"
DEVICE = "TCAAAAAAAAAAAA"


def args(tmp_path: Path, flag: str | None, config: str | None) -> argparse.Namespace:
    path = None
    if config is not None:
        path = tmp_path / "syncd.toml"
        path.write_text(config)
    return argparse.Namespace(enrolment_code=flag, config=path)


def test_the_code_comes_from_the_flag_or_the_config_file(tmp_path: Path) -> None:
    in_file = f'[registration]\nenrolment_code = "{CODE.lower()}"\n'
    assert _enrolment_code(args(tmp_path, None, in_file)) == CODE.lower()
    assert check_enrolment_code(_enrolment_code(args(tmp_path, None, in_file))) == CODE
    assert _enrolment_code(args(tmp_path, "ENR-0000-0000-0000-0000", in_file)) == (
        "ENR-0000-0000-0000-0000"
    )
    assert check_enrolment_code(_enrolment_code(args(tmp_path, None, "[registration]\n"))) is None


@pytest.mark.parametrize("code", ["ENR-1234", "ENR-IIII-LLLL-OOOO-UUUU", "x" * 500])
def test_a_malformed_code_is_refused_before_the_printer_is_opened(code: str) -> None:
    with pytest.raises(RegistrationError, match="ENR-XXXX"):
        check_enrolment_code(code)
    out = run_taxctl(
        *("syncd", "register", "--device", "/nonexistent/tty", "--chain", "http://127.0.0.1:9"),
        *("--taxpayer", "91350100M000100Y43", "--name", "ACME", "--enrolment-code", code),
    )
    assert out.returncode == 2 and "ENR-XXXX" in out.stderr, out.stderr
    assert len(out.stderr) < 300  # the bad input is not echoed back


class Printer:
    """The device side of registration: a CSR, then a signed segment request."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def hello(self) -> dict[str, Any]:
        return {}

    async def info(self) -> dict[str, Any]:
        return {"device_id": DEVICE, "training": False, "registered": False, "segments": []}

    async def csr(self, taxpayer: dict[str, str]) -> dict[str, Any]:
        return {"csr": b"csr"}

    async def load_cert(self, certificate: bytes) -> dict[str, Any]:
        return {"serial": 7}

    async def segment_request(self, count: int) -> bytes:
        self.calls.append(("segment_request", count))
        return b"signed request"

    async def load_segment(self, segment: bytes) -> dict[str, Any]:
        self.calls.append(("load_segment", segment))
        return {"code": "144031900110", "start": 1, "end": count_of(self), "numbers_left": 10}

    async def status(self) -> dict[str, Any]:
        return {"numbers_left": 10, "can_issue": True, "blocking": []}


def count_of(printer: Printer) -> int:
    return int(printer.calls[0][1])


class Chain:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def register(self, **kwargs: Any) -> Registration:
        self.calls.append(("register", kwargs))
        return Registration(DEVICE, b"cert", 1, ())

    async def allocate_segment(self, device_id: str, request: bytes) -> bytes:
        self.calls.append(("allocate_segment", (device_id, request)))
        return b"segment"


async def test_registration_sends_the_code_and_the_signed_request() -> None:
    printer, chain = Printer(), Chain()
    out = await register_device(
        printer,  # type: ignore[arg-type]
        chain,  # type: ignore[arg-type]
        {"tax_id": "91350100M000100Y43", "name": "ACME"},
        segment_size=10,
        enrolment_code=CODE,
    )
    assert chain.calls == [
        ("register", {"csr": b"csr", "enrolment_code": CODE}),
        ("allocate_segment", (DEVICE, b"signed request")),
    ]
    assert printer.calls == [("segment_request", 10), ("load_segment", b"segment")]
    assert out["numbers_left"] == 10
