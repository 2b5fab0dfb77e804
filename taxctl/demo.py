"""`taxctl demo`: the whole system on one machine, in training mode, in under a minute.

Starts a 4-node consortium chain, printers on virtual serial ports (ptys) and
the sync daemon, each as its own process exactly as an operator would run
them, and drives them with the POS simulator's tills: invoices while the
chain is reachable; the chain cut off while the shop keeps selling until each
printer reaches its offline limit; the chain back and the backlog drained;
buyers verifying (查验) and claiming invoices; a forged and a replayed
document sent to the chain; an audit of every printer's journal against the
chain. Last, on a production chain of its own, a printer registered only
with the bureau's enrolment code. It ends with a summary table.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from taxctl.demo_enrol import show_enrolment
from taxctl.demo_report import Tally, format_summary, restart_commands
from taxctl.demo_steps import DemoShop

DEFAULT_INVOICES = 20


def register(subparsers: Any) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="run chain, printers, sync daemon and tills together: an invoice's whole life",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    demo.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="leave the state in DIR (DIR/chain, DIR/device-N, DIR/syncd, DIR/logs)",
    )
    demo.add_argument("--devices", type=int, default=1, help="printers (default 1)")
    demo.add_argument(
        "--invoices",
        type=int,
        default=DEFAULT_INVOICES,
        help="sales per printer while online; sets the offline limit too"
        f" (default {DEFAULT_INVOICES})",
    )
    demo.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    if not 1 <= args.devices <= 16 or not 1 <= args.invoices <= 10_000:
        print("taxctl demo: --devices is 1..16 and --invoices 1..10000", file=sys.stderr)
        return 2
    if args.keep is not None and args.keep.exists() and any(args.keep.iterdir()):
        print(f"taxctl demo: {args.keep} is not empty; give a new directory", file=sys.stderr)
        return 2
    root = args.keep or Path(tempfile.mkdtemp(prefix="taxctl-demo-"))
    started = time.monotonic()
    shop = DemoShop(root, args.devices, args.invoices)
    tally = Tally()
    ok = False
    try:
        print(f"taxctl demo: everything under {root}")
        print("(training mode: nothing here is a valid invoice)\n")
        shop.start()
        shop.online(tally)
        shop.offline(tally)
        shop.heal(tally)
        shop.verify_and_claim(tally)
        shop.forge_and_replay(tally)
        shop.audit(tally)
        shop.stop()
        shop.verify_ledger()
        show_enrolment(root, tally)
        print()
        print(format_summary(tally, time.monotonic() - started))
        ok = tally.lost == 0 and tally.duplicated == 0 and tally.all_expected
    except (RuntimeError, OSError, KeyError, ValueError) as exc:
        print(f"\ntaxctl demo: {exc}", file=sys.stderr)
    finally:
        shop.stop()
    if args.keep is not None:
        print(f"\nState kept in {root}. To start each part on it again:")
        print(restart_commands(root, args.devices))
    elif not ok:
        print(f"(state and logs kept in {root})", file=sys.stderr)
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1
