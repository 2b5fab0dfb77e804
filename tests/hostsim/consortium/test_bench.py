"""`bench/consortium.py --quick` still runs and its figures add up (timings not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.hostsim.consortium.conftest import needs_etcd

ROOT = Path(__file__).resolve().parents[3]


@needs_etcd
def test_the_consortium_benchmark_commits_every_document_on_both_chains() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "consortium.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for side in ("in_process", "consortium"):
        assert report[side]["documents"] == 2 * 500, report
        assert report[side]["committed_per_s"] > 0
    assert set(report["consortium"]["cpu_ms_per_document"]) == {
        "bureau", "enterprise1", "enterprise2", "enterprise3"
    }  # fmt: skip
    assert report["consortium"]["etcd_batch_writes_per_s"] > 0
    assert report["consortium"]["ceiling_docs_per_s_from_etcd"] > 0
