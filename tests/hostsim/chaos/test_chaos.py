"""The chaos suite: kills, a noisy cable, chain outages and lost responses, with tills selling.

CI runs a short run; `bench/chaos.py --minutes N` runs the same for longer and reports it.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from device.journal import export
from device.signer import load_key
from hostsim.chaos.monkey import WEIGHTS, Fault, Monkey
from hostsim.chaos.run import run_chaos
from hostsim.chaos.world import ChaosSettings
from tests.helpers import check_journal, pycose_ok


def test_the_monkey_is_repeatable_and_throws_everything() -> None:
    a, b = Monkey(seed=5, devices=3), Monkey(seed=5, devices=3)
    strikes = [a.next() for _ in range(400)]
    assert strikes == [b.next() for _ in range(400)]
    assert set(Counter(s.fault for s in strikes)) == set(Fault) == set(WEIGHTS)
    assert {s.target for s in strikes} == {0, 1, 2}
    assert all(0 < s.hold <= 2.5 and 0 < s.then_wait <= 2.0 for s in strikes)
    short = Monkey(seed=5, devices=3, pace=0.5).next()
    assert short.hold == pytest.approx(strikes[0].hold * 0.5, abs=0.002)


@pytest.mark.chaos
def test_chaos_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    seconds = float(os.environ.get("TAXCTL_CHAOS_SECONDS", "20"))
    settings = ChaosSettings(root=tmp_path, seconds=seconds, devices=2, rate=30, seed=3, pace=0.6)
    report = run_chaos(settings, verifier=pycose_ok)
    assert report["problems"] == [] and report["ok"], report
    assert report["lost"] == 0 and report["duplicated"] == 0
    assert report["kills"] > 0 and report["corrupted_bytes"] > 0
    assert report["acknowledged_to_tills"] > 0
    # Every sale the tills were answered for is a document; nothing else was signed but
    # sales whose answer never came (given up) — there are none once the chaos stops.
    assert report["gave_up"] == 0
    assert report["documents"] == report["acknowledged_to_tills"]
    assert report["ledger"].startswith("ok")
    # The journals themselves, independently: gapless, hash-chained, signed (pycose).
    for n in (1, 2):
        state = tmp_path / f"device-{n}"
        documents = [row.doc for row in export(state)]
        assert documents, f"device-{n} signed nothing"
        check_journal(documents, load_key(state).public_key)
