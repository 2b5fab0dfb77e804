"""`taxctl demo` end to end, and the state it keeps with --keep."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from taxctl_base.processes import http
from tests.helpers import run_taxctl, spawn


def demo(*args: str) -> subprocess.CompletedProcess[str]:
    return run_taxctl("demo", *args, timeout=120)


def summary_row(out: str, name: str) -> int:
    match = re.search(rf"^   {name}\s+(\d+)", out, re.MULTILINE)
    assert match, f"no {name!r} row in:\n{out}"
    return int(match.group(1))


def test_demo_runs_every_step_and_keeps_its_state(tmp_path: Path) -> None:
    keep = tmp_path / "kept"
    done = demo("--keep", str(keep), "--devices", "2", "--invoices", "8")
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "UNEXPECTED" not in out
    issued, offline = summary_row(out, "issued"), summary_row(out, "offline")
    assert issued > offline > 0
    assert summary_row(out, "synced") == issued
    assert summary_row(out, "verified") == 5
    assert summary_row(out, "refused as expected") >= 3  # forged, replayed, made-up check code
    assert summary_row(out, "lost") == 0 and summary_row(out, "duplicated") == 0
    assert out.count("then OFFLINE_AMOUNT_LIMIT") == 2  # each printer reached its limit
    assert "rejected (bad_signature)" in out and "duplicate" in out
    # offline 查验: a receipt signed offline checks out before upload, then is on the chain
    offline_check = re.search(r"^   (\d{12}/\d{8}): not_yet_uploaded, upload by ", out, re.M)
    assert offline_check, out
    assert f"   {offline_check[1]}: authentic" in out

    for part in ("chain", "device-1", "device-2", "syncd", "logs"):
        assert (keep / part).is_dir(), part
    assert f"--data {keep}/chain" in out and f"--state {keep}/device-2" in out

    # The kept state starts again with the printed commands (ports chosen by the OS here).
    chain_cmd = next(line for line in out.splitlines() if "hostsim chain --data" in line)
    chain_args = chain_cmd.split()[1:-1]  # drop "taxctl" and "&"
    chain_args[chain_args.index("--listen") + 1] = "127.0.0.1:0"
    chain = spawn(chain_args)
    try:
        _, health = http("GET", f"{chain.ready['url']}/v1/health")
        assert health["height"] > 0
    finally:
        chain.stop()
    device_cmd = next(line for line in out.splitlines() if "device run --state" in line)
    device = spawn(device_cmd.split()[1:-1])
    try:
        assert device.ready["device_id"] in out
    finally:
        device.stop()


def test_demo_refuses_bad_arguments(tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    done = demo("--keep", str(tmp_path / "busy"))
    assert done.returncode == 2 and "is not empty" in done.stderr
    done = demo("--devices", "0")
    assert done.returncode == 2 and "--devices is 1..16" in done.stderr


def test_the_audit_says_all_documents_are_on_the_chain_only_when_they_are() -> None:
    from hostsim.pos.till import Acknowledged
    from taxctl.demo_steps import given_on_chain

    def ack(counter: int) -> Acknowledged:
        return Acknowledged("TCAAAAAAAAAAAA", counter, "invoice", "1", "1", 1, "k", 0.0, 1)

    assert given_on_chain(3, []) == (
        "every one of the 3 documents the tills were given is on the chain"
    )
    one = given_on_chain(3, [ack(2)])
    assert "every one" not in one
    assert (
        one == "1 of the 3 documents the tills were given are not on the chain: TCAAAAAAAAAAAA #2"
    )
    many = given_on_chain(9, [ack(c) for c in range(1, 8)])
    assert many.startswith("7 of the 9") and many.endswith("TCAAAAAAAAAAAA #5 and 2 more")
