"""`taxctl hostsim …`: the chain simulator, its verifier, and a noisy serial line."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    hostsim = subparsers.add_parser("hostsim", help="simulators of the outside world")
    sub = hostsim.add_subparsers(dest="hostsim_command", metavar="WHAT", required=True)

    chain = sub.add_parser(
        "chain",
        help="run the consortium chain simulator (or `chain verify`)",
        description="Run N consortium nodes and the tax bureau behind one HTTP API.",
    )
    chain.add_argument("--data", help="ledger directory (created if missing); required")
    chain.add_argument("--listen", default="127.0.0.1:8700", help="API address HOST:PORT")
    chain.add_argument("--nodes", type=int, default=4, help="consortium nodes (default 4)")
    chain.add_argument("--training", action="store_true", help="trust the training bureau key")
    chain.add_argument("--faults", action="store_true", help="enable the fault-injection admin API")
    chain.add_argument(
        "--admin", help="admin API address with --faults (default: API host, any port)"
    )
    chain.add_argument("--block-max", type=int, default=2000, help="transactions per block")
    chain.add_argument(
        "--block-interval-ms", type=float, default=20.0, help="wait this long to fill a block"
    )
    chain.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes that decode and verify large batches (0: in the event loop)",
    )
    chain.set_defaults(func=_run_chain)
    chain_sub = chain.add_subparsers(dest="chain_command", metavar="ACTION")
    verify = chain_sub.add_parser("verify", help="re-check every block, signature and document")
    verify.add_argument("--data", required=True, help="ledger directory")
    verify.set_defaults(func=_verify_chain)

    noisy = sub.add_parser(
        "noisy-link",
        help="a noisy serial line in front of a device's pty",
        description="Open the device's pty, create PATH for the host, and damage bytes between.",
    )
    noisy.add_argument("--device", required=True, help="the device's pty path")
    noisy.add_argument("--link", required=True, help="the pty path the host should open")
    noisy.add_argument("--corrupt", type=float, default=0.0, help="bit-flip rate per byte")
    noisy.add_argument("--drop", type=float, default=0.0, help="byte loss rate")
    noisy.add_argument("--burst", type=float, default=0.0, help="burst loss rate per chunk")
    noisy.add_argument("--delay-ms", type=float, default=0.0, help="maximum added delay")
    noisy.add_argument("--seed", type=int, default=0)
    noisy.set_defaults(func=_run_noisy)


def _run_chain(args: argparse.Namespace) -> int:
    from hostsim.chain.server import run

    if not args.data:
        print("taxctl hostsim chain: --data DIR is required", file=sys.stderr)
        return 2
    return run(args)


def _verify_chain(args: argparse.Namespace) -> int:
    from hostsim.chain.verify import LedgerCorrupt, verify_ledger

    try:
        report = verify_ledger(Path(args.data))
    except FileNotFoundError as exc:
        print(f"taxctl hostsim chain verify: {exc}", file=sys.stderr)
        return 2
    except LedgerCorrupt as exc:
        print(f"BAD: {exc}", file=sys.stderr)
        return 1
    print(
        f"ok: {report.blocks} blocks, {report.transactions} transactions,"
        f" {report.documents} documents from {report.devices} devices"
    )
    return 0


def _run_noisy(args: argparse.Namespace) -> int:
    from hostsim.noise import NoiseSettings
    from hostsim.noisylink import NoisyLink

    try:
        settings = NoiseSettings(
            corrupt_rate=args.corrupt,
            drop_rate=args.drop,
            burst_rate=args.burst,
            delay_max=args.delay_ms / 1000,
        )
    except ValueError as exc:
        print(f"taxctl hostsim noisy-link: {exc}", file=sys.stderr)
        return 2

    async def main() -> None:
        link = NoisyLink(args.device, args.link, settings, settings, args.seed)
        await link.start()
        print(json.dumps({"event": "ready", "link": args.link}), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        print(json.dumps({"event": "stopped", **link.stats()}), flush=True)
        await link.close()

    asyncio.run(main())
    return 0
