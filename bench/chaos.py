"""A long chaos run: kills, a noisy cable, chain outages and lost responses, for N minutes.

The same run as tests/hostsim/chaos (hostsim/chaos), longer: two printers behind noisy
links (bit flips, dropped bytes, delays), the chain, printers and syncd killed
with SIGKILL and restarted, the chain refusing, answering 503, losing
responses after committing, cutting answers in half and losing one or two of
its four nodes, while the POS simulator's tills sell at a steady rate. At the
end every journal is compared with the chain byte for byte, every document
is verified with pycose (the standard COSE library), every document the tills
were given is looked up on the chain, and the ledger is re-checked from disk.

    python bench/chaos.py --minutes 10 [--rate 40] [--devices 2] [--seed 1] [--consortium]

With --consortium the chain is 3 etcd members and 4 node processes; its faults are
real kills: nodes SIGKILLed or stopped (one or two at a time) and the etcd leader
SIGKILLed, each restarted after a while (hostsim/chaos/consortium.py).

Prints one JSON object; exits 1 if anything was lost, duplicated or broken.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hostsim.chaos.run import run_chaos
from hostsim.chaos.world import ChaosSettings
from tests.helpers import pycose_ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=40.0, help="sales per second")
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--corrupt", type=float, default=0.0001, help="bit flips per byte")
    parser.add_argument("--drop", type=float, default=0.00005, help="lost bytes per byte")
    parser.add_argument("--keep", type=Path, help="leave the run's state and logs here")
    parser.add_argument(
        "--consortium",
        action="store_true",
        help="the chain as 3 etcd members and 4 node processes (docs/consortium.md)",
    )
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="taxctl-chaos-"))
    settings = ChaosSettings(
        root=root,
        seconds=args.minutes * 60,
        devices=args.devices,
        rate=args.rate,
        corrupt=args.corrupt,
        drop=args.drop,
        seed=args.seed,
    )
    if args.consortium:
        from hostsim.chaos.consortium import run_consortium_chaos

        report = run_consortium_chaos(settings, verifier=pycose_ok)
    else:
        report = run_chaos(settings, verifier=pycose_ok)
    print(json.dumps({"benchmark": "chaos", **report}))
    if args.keep is None and report["ok"]:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
