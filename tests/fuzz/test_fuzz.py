"""Fuzz the four entry points of hostile input, briefly and reproducibly.

Each target is a real process (printer, chain, syncd) except syncd's chain
client, which is fed answers from a loopback server. After every input the
target's probe answers within a second, its memory stays bounded, and its
state moved only for an input it accepted. `bench/fuzz.py --minutes N`
runs the same campaigns for longer, with fresh randomness.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz import campaigns

# Hypothesis warns that some inputs (60 KB strings) are slow to print: they are meant to be big.
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")

EXAMPLES = int(os.environ.get("TAXCTL_FUZZ_EXAMPLES", "150"))
BENCH = Path(__file__).resolve().parents[2] / "bench" / "fuzz.py"


@pytest.mark.parametrize(
    ("target", "examples"), [("printer", 2 * EXAMPLES), ("chain", EXAMPLES), ("pos", EXAMPLES)]
)
def test_process_targets(target: str, examples: int, tmp_path: Path) -> None:
    figures = campaigns.run(target, tmp_path, examples=examples)
    assert figures.inputs == examples


def test_chain_answers_through_the_bench_script() -> None:
    """In a child process with a time limit: a decoding bomb in the client would hang
    this process in C code, where no timeout inside it can interrupt."""
    out = subprocess.run(
        [sys.executable, str(BENCH), "--target", "answers", "--examples", str(2 * EXAMPLES)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    report = json.loads(out.stdout.splitlines()[-1])
    (figures,) = report["targets"]
    assert figures["target"] == "chain answers to syncd"
    assert figures["inputs"] == 2 * EXAMPLES
    assert figures["slowest_probe_s"] < 1.0
