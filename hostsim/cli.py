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

from device.render import RECEIPT_ZONE
from hostsim.chain.ratelimit import VERIFY_LIMIT
from taxctl_base.version import add_version


def register(subparsers: Any) -> None:
    hostsim = subparsers.add_parser("hostsim", help="simulators of the outside world")
    sub = hostsim.add_subparsers(dest="hostsim_command", metavar="WHAT", required=True)
    chain_sub = _add_chain(sub)
    verify = chain_sub.add_parser("verify", help="re-check every block, signature and document")
    verify.add_argument("--data", required=True, help="ledger directory")
    verify.set_defaults(func=_verify_chain)
    _add_node(chain_sub)

    from hostsim import enrol
    from hostsim.consortium import up

    up.add_parser(sub)

    enrol.add_parser(sub)
    _add_noisy_link(sub)
    _add_pos(sub)


def _add_chain(sub: Any) -> Any:
    """`hostsim chain` and its options; the subparsers for its actions."""
    chain = sub.add_parser(
        "chain",
        help="run the consortium chain simulator (or `chain verify`)",
        description="Run N consortium nodes and the tax bureau behind one HTTP API.",
    )
    add_version(chain)
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
    _held_options(chain)
    chain.add_argument(
        "--verify-per-minute",
        type=float,
        default=VERIFY_LIMIT.per_minute,
        help=f"查验 questions a client may ask a minute, after a burst of twice that"
        f" (default {VERIFY_LIMIT.per_minute:g}; 0: no limit, for load tests)",
    )
    chain.add_argument(
        "--zone",
        default=RECEIPT_ZONE,
        help=f"time zone the 查验 page shows times in (default {RECEIPT_ZONE}); APIs stay UTC",
    )
    chain.set_defaults(func=_run_chain)
    return chain.add_subparsers(dest="chain_command", metavar="ACTION")


def _add_node(chain_sub: Any) -> None:
    """`hostsim chain node`: one consortium node of its own, ordering through etcd."""
    node = chain_sub.add_parser(
        "node",
        help="run one consortium node (its own key and ledger), ordering through etcd",
        description="One consortium node: the chain API over its own ledger, with blocks"
        " ordered through etcd and final with 2f+1 node signatures (docs/consortium.md).",
    )
    node.add_argument("--id", required=True, help="this node's id in the consortium")
    node.add_argument("--data", required=True, help="the node's directory (key, ledger)")
    node.add_argument("--etcd", required=True, help="etcd client URLs, URL[,URL...]")
    node.add_argument("--listen", default="127.0.0.1:0", help="API address HOST:PORT")
    node.add_argument("--training", action="store_true", help="trust the training bureau key")
    node.add_argument(
        "--retain-seconds",
        type=_positive(float),
        default=3600.0,
        help="keep the etcd log for a node gone this long, then it catches up from peers",
    )
    node.set_defaults(func=_run_node)


def _add_noisy_link(sub: Any) -> None:
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


def _add_pos(sub: Any) -> None:
    pos = sub.add_parser(
        "pos",
        help="tills that issue invoices through syncd's POS API (also the load generator)",
        description="Drive syncd's POS API like a shop's tills and summarise what happened.",
    )
    where = pos.add_mutually_exclusive_group()
    where.add_argument("--api", default="127.0.0.1:8631", help="syncd's POS API, HOST:PORT or URL")
    where.add_argument("--socket", type=Path, help="syncd's POS API Unix socket")
    pos.add_argument("--count", type=int, default=100, help="sales to make (default 100)")
    pos.add_argument("--rate", type=float, default=0.0, help="sales per second (0: flat out)")
    pos.add_argument("--concurrency", type=int, default=4, help="tills selling at once")
    pos.add_argument(
        "--device",
        action="append",
        help="sell on this printer (name, port or id); repeat to go round several",
    )
    pos.add_argument("--seed", type=int, default=0, help="seed of the sales mix")
    pos.add_argument("--credit-share", type=float, default=0.03, help="share of credit notes")
    pos.add_argument("--retry-share", type=float, default=0.05, help="sales asked for twice")
    pos.add_argument("--patience", type=float, default=30.0, help="seconds to retry one sale")
    pos.add_argument("--record", type=Path, help="append each acknowledged document (JSONL)")
    pos.add_argument(
        "--token-file", type=Path, help="the bearer token syncd's api.token_file holds"
    )
    pos.add_argument("--json", action="store_true", help="print the summary as JSON")
    pos.set_defaults(func=_run_pos)


def _held_options(chain: Any) -> None:
    from hostsim.chain.state import HELD_LIMITS as held

    chain.add_argument(
        "--held-per-device",
        type=_positive(int),
        default=held.per_device,
        help=f"documents held ahead of a gap, per device (default {held.per_device})",
    )
    chain.add_argument(
        "--held-total",
        type=_positive(int),
        default=held.total,
        help=f"documents held ahead of gaps, all devices (default {held.total})",
    )
    chain.add_argument(
        "--held-max-age",
        type=_positive(float),
        default=held.max_age,
        help=f"seconds a held document is kept (default {held.max_age:g})",
    )


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError("must be greater than 0")
        return value

    return parse


def _run_chain(args: argparse.Namespace) -> int:
    from hostsim.chain.server import run

    if not args.data:
        print("taxctl hostsim chain: --data DIR is required", file=sys.stderr)
        return 2
    return run(args)


def _run_node(args: argparse.Namespace) -> int:
    import logging

    from hostsim.consortium.node import run
    from taxctl_base.address import parse_listen

    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        return run(
            Path(args.data),
            args.id,
            args.etcd,
            parse_listen(args.listen),
            args.training,
            args.retain_seconds,
        )
    except (ValueError, OSError) as exc:
        print(f"taxctl hostsim chain node: {exc}", file=sys.stderr)
        return 2


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


def _run_pos(args: argparse.Namespace) -> int:
    from hostsim.pos.mix import MixSettings
    from hostsim.pos.till import TillSettings, run_tills

    problems = [
        f"--{name.replace('_', '-')} must be between 0 and 1"
        for name in ("credit_share", "retry_share")
        if not 0 <= getattr(args, name) <= 1
    ]
    if args.count < 0 or args.concurrency < 1 or args.rate < 0 or args.patience <= 0:
        problems.append("--count, --rate >= 0; --concurrency >= 1; --patience > 0")
    if problems:
        print(f"taxctl hostsim pos: {'; '.join(problems)}", file=sys.stderr)
        return 2
    if args.socket is not None:
        api = f"unix:{args.socket}"
    else:
        api = args.api if "://" in args.api else f"http://{args.api}"
    settings = TillSettings(
        api=api,
        count=args.count,
        concurrency=args.concurrency,
        rate=args.rate,
        seed=args.seed,
        devices=tuple(args.device or ()),
        patience=args.patience,
        mix=MixSettings(credit_share=args.credit_share, retry_share=args.retry_share),
        record=args.record,
        token=args.token_file.read_text(encoding="utf-8").strip() if args.token_file else None,
    )
    report = run_tills(settings)
    summary = report.summary()
    if args.json:
        print(json.dumps(summary))
    else:
        print(format_summary(summary))
    if report.resend_mismatched:
        for line in report.resend_mismatched[:5]:
            print(f"BUG: a sale asked for again got another answer: {line}", file=sys.stderr)
        return 1
    return 0 if summary["acknowledged"] or not args.count else 1


def format_summary(summary: dict[str, Any]) -> str:
    latency = summary["latency_ms"]
    refused = ", ".join(f"{code} {n}" for code, n in summary["refused"].items()) or "none"
    rows = [
        ("sales", summary["sales"]),
        (
            "acknowledged",
            f"{summary['acknowledged']} ({summary['invoices']} invoices,"
            f" {summary['credit_notes']} credit notes)",
        ),
        ("refused by the printer", refused),
        ("given up (no answer)", summary["gave_up"]),
        ("retried with the same key", summary["retries"]),
        (
            "asked twice on purpose",
            f"{summary['resent_same_key']} ({summary['resend_mismatched']} got another answer)",
        ),
        ("elapsed", f"{summary['elapsed_s']:.2f} s ({summary['acknowledged_per_s']}/s)"),
        (
            "latency p50 / p90 / p99 / max",
            f"{latency['p50']} / {latency['p90']} / {latency['p99']} / {latency['max']} ms",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
