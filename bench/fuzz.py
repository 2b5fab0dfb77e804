"""Fuzz every entry point of hostile input for N minutes (tests/fuzz, with fresh randomness).

Targets: the printer's frames and the bodies of every command (a printer
process on a pty), the chain's API (a chain process), syncd's POS API (syncd
with a printer and a chain), and chain answers fed to syncd's chain client
(a loopback server). After every input the target must answer its probe
within 1 s, stay under its memory bound, and change state only for an
input it accepted.

    python bench/fuzz.py --minutes 10 [--target printer --target pos ...]

Prints one JSON object: per target the inputs tried, the slowest answer and
probe, the peak RSS and what the answers were. Exits 1 at the first failure,
with the input that caused it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fuzz.campaigns import SESSIONS, run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=0.0, help="total, split among targets")
    parser.add_argument("--target", action="append", choices=sorted(SESSIONS))
    parser.add_argument("--examples", type=int, default=200, help="inputs per round")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # hypothesis warns about large reprs of its inputs
    targets = args.target or list(SESSIONS)
    seconds = args.minutes * 60 / len(targets)
    results: list[dict[str, object]] = []
    failure: dict[str, str] | None = None
    started = time.monotonic()
    for name in targets:
        root = Path(tempfile.mkdtemp(prefix=f"taxctl-fuzz-{name}-"))
        try:
            figures = run(
                name, root, examples=args.examples, seconds=seconds, derandomize=args.minutes == 0
            )
            results.append(figures.as_json())
        except Exception as exc:
            notes = "\n".join(getattr(exc, "__notes__", []))  # hypothesis: the input
            failure = {"target": name, "error": f"{exc}"[:2000], "input": notes[:4000]}
            break
        finally:
            shutil.rmtree(root, ignore_errors=True)
    report = {
        "benchmark": "fuzz",
        "minutes": args.minutes,
        "seconds": round(time.monotonic() - started, 1),
        "targets": results,
        **({"failure": failure} if failure else {}),
    }
    print(json.dumps(report, ensure_ascii=False))
    return 0 if failure is None else 1


if __name__ == "__main__":
    sys.exit(main())
