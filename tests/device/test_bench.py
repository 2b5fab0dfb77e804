"""`bench/issue.py` still runs and its figures add up (a short run; timings are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from device.journal import Journal
from tests.helpers import run_taxctl

ROOT = Path(__file__).resolve().parents[2]


def test_the_issue_benchmark_reports_what_the_device_committed() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "issue.py"),
            "--seconds",
            "0.3",
            "--rounds",
            "1",
            "--concurrency",
            "1,8",
            "--storage-latency",
            "2",
            "--storage-concurrency",
            "8",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    (round_,) = report["rounds"]
    assert round_["fsync_commits_per_s"] > 0 and report["ceilings"]["ed25519_signs_per_s"] > 0
    for run in round_["runs"]:
        # The device's own count, between two STATUS requests around the timed part,
        # is exactly the invoices the host got back.
        assert run["invoices"] > 0 and run["device_documents"] == run["invoices"], run
        assert 1 <= run["device_commits"] <= run["invoices"], run
        assert run["documents_per_commit"] == round(run["invoices"] / run["device_commits"], 2)
        assert run["vs_fsync_commits"] > 0
    one = round_["runs"][0]
    assert one["device_commits"] == one["invoices"], "one in flight: nothing to share a commit"
    assert set(report["median_by_in_flight"]) == {"1", "8"}
    slow = report["slow_storage"]
    assert slow["latency_ms"] == 2 and slow["ceiling_one_commit_each_per_s"] == 500
    (run,) = slow["runs"]
    assert run["invoices"] > 0 and run["device_documents"] == run["invoices"], run
    assert 1 <= run["device_commits"] <= run["invoices"], run


def test_storage_latency_is_added_to_every_commit(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.storage_latency = 0.05
    try:
        start = time.monotonic()
        for n in range(3):
            journal.set_meta("probe", n)
        assert time.monotonic() - start >= 0.15  # three commits, 50 ms each at least
        assert journal.meta("probe") == 2
    finally:
        journal.close()


@pytest.mark.parametrize("value", ["-1", "nan", "10001", "2ms"])
def test_storage_latency_out_of_range_is_refused(tmp_path: Path, value: str) -> None:
    out = run_taxctl(
        "device", "run", "--state", str(tmp_path / "s"), "--link", str(tmp_path / "t"),
        "--storage-latency", value, timeout=20,
    )  # fmt: skip
    assert out.returncode == 2 and "--storage-latency" in out.stderr, out.stderr
    assert "milliseconds" in out.stderr, out.stderr  # its range check, not argparse not knowing it
    assert not (tmp_path / "s").exists()


def test_the_line_benchmark_lands_every_document_once() -> None:
    """bench/line.py --quick: a 120-document backlog drained over a paced 115,200 baud line
    while sales go on; only correctness is asserted (every journal document on the chain
    once, byte for byte), never its timings."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "line.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = json.loads(result.stdout)["runs"]
    assert run["on_chain_once"], run["audit"]
    assert run["sales_during_drain"]["sales"] == run["sales_idle_line"]["sales"] == 5
    assert run["ceiling"]["fetch_only"] < 1


def test_the_answer_benchmark_times_every_piece() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "answer.py"),
            "--seconds",
            "0.01",
            "--documents",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["documents"] == 3  # two invoices and a credit note
    pieces = {"parse", "verify", "qr_check", "qr_parse", "json_view"}
    pieces |= {
        f"{what}_{paper}"
        for what in ("text", "document_json", "dumps", "answer")
        for paper in (58, 80)
    }
    assert set(figures) == pieces | {"documents"}
    assert all(figures[piece] > 0 for piece in pieces)


def test_the_device_sync_benchmark_runs_both_ways() -> None:
    """`bench/device_sync.py` runs with and without sync traffic (a few rounds)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "device_sync.py"), "--rounds", "6"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    runs = [json.loads(line) for line in result.stdout.splitlines()]
    assert [run["sync"] for run in runs] == [False, True]
    for run in runs:
        assert run["invoices"] > 0 and run["device_cpu_us_per_invoice"] > 0
    assert runs[0]["invoices_per_ack"] is None and runs[1]["invoices_per_ack"] > 0
