"""`bench/issue.py` still runs and its figures add up (a short run; timings are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
