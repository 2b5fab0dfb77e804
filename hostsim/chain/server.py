"""`taxctl hostsim chain`: run a chain with its API (and, with --faults, the admin API)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import signal
import sys
from pathlib import Path

from aiohttp import web

from device.protocol.untrusted import shown
from device.render import RECEIPT_ZONE, zone_of
from hostsim.chain.api import build_app
from hostsim.chain.faults import FAULTS, Faults, Listener, admin_app, inject
from hostsim.chain.node import Chain
from hostsim.chain.page import ZONE
from hostsim.chain.ratelimit import VERIFY_LIMIT, RateLimit
from hostsim.chain.state import HELD_LIMITS, HeldLimits
from taxctl_base.address import parse_listen

log = logging.getLogger("taxctl.chain")
DRAIN_SECONDS = 5.0
GC_YOUNG_THRESHOLD = 50_000


async def serve(
    directory: Path,
    listen: tuple[str, int],
    *,
    nodes: int,
    training: bool,
    faults: bool,
    admin: tuple[str, int] | None,
    block_max: int = 2000,
    block_interval: float = 0.02,
    workers: int = 0,
    held_limits: HeldLimits = HELD_LIMITS,
    verify_limit: RateLimit | None = VERIFY_LIMIT,
    zone: str = RECEIPT_ZONE,
) -> int:
    chain = Chain.open(
        directory,
        nodes=nodes,
        training=training,
        block_max=block_max,
        block_interval=block_interval,
        workers=workers,
        held_limits=held_limits,
    )
    chain.engine.start()
    fault_state = Faults()
    app = build_app(chain, [inject] if faults else [], verify_limit)
    app[FAULTS] = fault_state
    app[ZONE] = zone
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    listener = Listener(runner, *listen)
    admin_runner: web.AppRunner | None = None
    try:
        ready = _ready_line(chain, directory, listen[0], await listener.start())
        if faults:
            admin_runner = web.AppRunner(admin_app(chain, fault_state, listener), access_log=None)
            await admin_runner.setup()
            host, admin_port = admin or (listen[0], 0)
            admin_listener = Listener(admin_runner, host, admin_port)
            ready["admin_url"] = f"http://{_host(host)}:{await admin_listener.start()}"
        print(json.dumps(ready), flush=True)
        await _until_signalled()
        await _drain(chain, listener)
    finally:
        with contextlib.suppress(Exception):
            await runner.cleanup()
        if admin_runner is not None:
            await admin_runner.cleanup()
        await chain.engine.stop()
        chain.close()
    return 0


def _ready_line(chain: Chain, directory: Path, host: str, port: int) -> dict[str, object]:
    """What the "ready" line tells whoever started the chain."""
    return {
        "event": "ready",
        "url": f"http://{_host(host)}:{port}",
        "chain_id": chain.chain_id,
        "training": chain.training,
        "height": chain.engine.height,
        "nodes": len(chain.nodes.keys),
        "admin_token_file": str(directory / "admin.token"),
    }


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _drain(chain: Chain, listener: Listener) -> None:
    """Stop taking requests, then give what is in the mempool a few seconds to finalize."""
    log.info("stopping: finalizing what is in the mempool (up to %.0f s)", DRAIN_SECONDS)
    await listener.stop()
    for _ in range(int(DRAIN_SECONDS / 0.05)):
        if not chain.engine.mempool or not chain.nodes.has_quorum():
            break
        await asyncio.sleep(0.05)


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def verify_limit(per_minute: float) -> RateLimit | None:
    if per_minute < 0:
        raise ValueError("--verify-per-minute is 0 (no limit) or more")
    if per_minute == 0:
        return None
    return RateLimit(per_minute=per_minute, burst=max(1, int(per_minute * 2)))


def page_zone(name: str) -> str:
    """The --zone name, checked before anything starts (zoneinfo, as the receipt's)."""
    try:
        zone_of(name)
    except ValueError:
        raise ValueError(
            f"--zone: unknown time zone {shown(name)} (an IANA name such as Asia/Shanghai)"
        ) from None
    return name


def run(args: argparse.Namespace) -> int:
    from hostsim.chain.node import ChainSetupError

    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    # The chain holds a large long-lived object graph (tip state, block cache, pending
    # transactions) and allocates thousands of containers per batch; at the default
    # young-generation threshold (700) the collector ran dozens of times per batch,
    # each pass promoting and re-walking that graph. Measured with bench/chain.py:
    # about 6 % more documents per second. Cycles are still collected.
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)
    try:
        listen = parse_listen(args.listen)
        admin = parse_listen(args.admin) if args.admin else None
        return asyncio.run(
            serve(
                Path(args.data),
                listen,
                nodes=args.nodes,
                training=args.training,
                faults=args.faults,
                admin=admin,
                block_max=args.block_max,
                block_interval=args.block_interval_ms / 1000,
                workers=args.workers,
                held_limits=HeldLimits(args.held_per_device, args.held_total, args.held_max_age),
                verify_limit=verify_limit(args.verify_per_minute),
                zone=page_zone(args.zone),
            )
        )
    except (ValueError, ChainSetupError, OSError) as exc:
        print(f"taxctl hostsim chain: {exc}", file=sys.stderr)
        return 2
