"""`bench/e2e.py --load wrk` still runs and its figures add up (a short run; timings are not
asserted): every sale wrk was answered 201 for is one new document, and all are synced."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt install wrk)")
def test_wrk_sales_are_each_one_document_and_all_synced() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "e2e.py"), "--seconds", "2", "--load", "wrk"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["load"] == "wrk" and report["refused"] == {}, report
    assert report["acknowledged"] == report["sales"] > 0, report
    # No document given for two sales; one printer, counters from 1: the warm-up's, then
    # one per 201 wrk saw, and at most one per connection cut off at the window's end.
    assert report["distinct_documents"] == report["acknowledged"], report
    (last,) = report["last_counters"].values()
    issued = report["warm_up_acknowledged"] + report["acknowledged"]
    assert issued <= last <= issued + report["concurrency"], report
    assert report["synced_per_s"] > 0 and report["issued_per_s"] > 0
    assert report["cpu_us_per_sale"]["wrk"] > 0
    assert report["vs_printer_alone"] > 0
