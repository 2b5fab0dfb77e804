"""The demo's enrolment step: who may register a printer outside training.

On a production chain of its own (the rest of the demo is training, where
printers provision themselves): registering a printer without the bureau's
enrolment code is refused and creates nothing; the bureau issues a code
(`taxctl hostsim bureau enrol`) and the same registration goes through, its
first numbers on a request the printer signed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hostsim.audit import admin_token
from taxctl.demo_report import Tally
from taxctl_base.processes import Child, http

TAXPAYER = ("91350100M000100Y43", "ACME Trading")


def _taxctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taxctl", *args], capture_output=True, text=True, timeout=60
    )


def show_enrolment(root: Path, tally: Tally) -> None:
    print("\n10. enrolment: registering a printer on a production chain")
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    data = root / "production-chain"
    chain = Child(
        "production chain",
        ["hostsim", "chain", "--data", str(data), "--listen", "127.0.0.1:0", "--workers", "0"],
        logs / "production-chain.log",
    )
    children = [chain]
    try:
        url = chain.ready["url"]
        _, consortium = http("GET", f"{url}/v1/consortium")
        link = root / "production-printer.tty"
        state = ["--state", str(root / "production-printer"), "--link", str(link)]
        printer = Child(
            "production printer",
            ["device", "run", *state, "--bureau-key", str(consortium["bureau_key"])],
            logs / "production-printer.log",
        )
        children.append(printer)
        _register(url, data, link, str(printer.ready["device_id"]), tally)
    finally:
        for child in reversed(children):
            child.stop()


def _register(url: str, data: Path, link: Path, device_id: str, tally: Tally) -> None:
    tax_id, name = TAXPAYER
    register = ["syncd", "register", "--device", str(link), "--chain", url]
    register += ["--taxpayer", tax_id, "--name", name, "--segment-size", "100"]
    without = _taxctl(*register)
    status, _ = http("GET", f"{url}/v1/devices/{device_id}", token=admin_token(data))
    refused = without.returncode == 1 and "enrolment_required" in without.stderr
    tally.expect_refusal(
        "registration without a code",
        "a printer without the bureau's enrolment code is not registered",
        refused and status == 404,
        without.stderr.strip()[-200:],
    )
    print(f"   printer {device_id} for {tax_id}, no enrolment code: refused, nothing created")
    enrol = ["hostsim", "bureau", "enrol", "--chain", url, "--taxpayer", tax_id, "--name", name]
    issued = _taxctl(*enrol, "--token-file", str(data / "admin.token"), "--json")
    tally.expect("the bureau issues an enrolment code", issued.returncode == 0, issued.stderr)
    if issued.returncode != 0:
        return
    code = json.loads(issued.stdout)
    print(f"   the bureau issues {code['code']} (1 printer, until {code['expires_at']})")
    done = _taxctl(*register, "--enrolment-code", code["code"])
    registered = done.returncode == 0 and '"numbers_left": 100' in done.stdout
    tally.expect("a printer with the code is registered", registered, done.stderr[-200:])
    if registered:
        print("   with the code: certificate issued, 100 numbers on a request the printer signed")
