"""`taxctl hostsim chain node`: one consortium node, its own process, ledger and key.

It serves the embedded chain's HTTP API (docs/chain-openapi.yaml) over its
own SQLite ledger; what it accepts is ordered through etcd (`orderer.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

from aiohttp import web

from device.protocol.clock import SystemClock
from device.protocol.keys import KeyPair
from hostsim.bureau import BUREAU_KEY_FILE, Bureau
from hostsim.chain.api import build_app
from hostsim.chain.errors import ChainError, Code
from hostsim.chain.ledger import Ledger
from hostsim.chain.node import Chain, ChainSetupError
from hostsim.chain.ratelimit import VERIFY_LIMIT
from hostsim.consortium import housekeeping, identity, peers
from hostsim.consortium.acts import ConsortiumActs
from hostsim.consortium.engine import ConsortiumEngine, ConsortiumNodes, PinnedClock
from hostsim.consortium.etcd import Etcd, wait_ready
from hostsim.consortium.orderer import Orderer

log = logging.getLogger("taxctl.consortium")


class _BureauPublicKey:
    """The bureau's key as an enterprise node holds it: public only."""

    def __init__(self, public_key: bytes) -> None:
        self.public_key = public_key

    def sign(self, message: bytes) -> bytes:
        raise ChainError(
            Code.UNAVAILABLE,
            "only the bureau's node signs for the bureau; send this request to it",
        )


class VerifyingBureau(Bureau):
    """An enterprise node's bureau: it checks the bureau's signatures, makes none."""

    def __init__(self, directory: Path, public_key: bytes) -> None:
        super().__init__(directory, training=True)  # the admin token; the key is replaced
        self.training = False
        self.key = cast(KeyPair, _BureauPublicKey(public_key))


def open_node(
    directory: Path,
    node_id: str,
    etcd_urls: list[str],
    training: bool,
    retain_seconds: float = 3600.0,
) -> Chain:
    me = identity.load(directory, node_id, training)
    if training or (directory / BUREAU_KEY_FILE).exists():
        bureau = Bureau(directory, training)
    else:
        bureau = VerifyingBureau(directory, me.bureau_key)
    if bureau.public_key != me.bureau_key:
        raise identity.SetupError("this node's bureau key differs from the consortium's")
    ledger = Ledger(directory)
    try:
        consortium_raw = me.consortium.raw
        recorded = ledger.get_meta("consortium")
        if recorded is None:
            with ledger.transaction():
                ledger.set_meta("training", bytes([training]))
                ledger.set_meta("chain_id", me.consortium.chain_id.encode())
                ledger.set_meta("consortium", consortium_raw)
                ledger.set_meta("bureau_key", bureau.public_key)
        elif recorded != consortium_raw:
            raise identity.SetupError("the ledger was made for another consortium")
        nodes = ConsortiumNodes(node_id, me.key, me.consortium)
        engine = ConsortiumEngine(
            ledger,
            nodes,
            bureau,
            PinnedClock(SystemClock()),
            Etcd(etcd_urls),
            chain_id=me.consortium.chain_id,
            training=training,
            consortium=me.consortium.raw,
            retain_seconds=retain_seconds,
        )
        acts = ConsortiumActs(engine)
    except BaseException:
        ledger.close()
        raise
    return Chain(
        directory,
        ledger,
        nodes,
        bureau,
        engine,
        acts,
        me.consortium.chain_id,
        training,
        consortium_raw,
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def no_rotation(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A new epoch is signed by the bureau and endorsed by each node with its own key, a
    ceremony across organisations; one node cannot run it alone."""
    if request.path == "/v1/consortium/rotate":
        raise ChainError(
            Code.BAD_REQUEST,
            "a consortium node does not rotate on its own: the bureau issues epoch + 1 and"
            " each node endorses it (docs/consortium.md)",
        )
    return await handler(request)


def start_tasks(chain: Chain) -> Orderer:
    engine = cast(ConsortiumEngine, chain.engine)
    orderer = Orderer(engine, chain.acts)
    engine.start()
    loop = asyncio.get_running_loop()
    for work in (
        orderer.run(),
        housekeeping.watch(engine, orderer.wake),
        housekeeping.campaign(engine),
        housekeeping.housekeeping(engine),
    ):
        engine.tasks.append(loop.create_task(work))
    return orderer


async def serve(
    directory: Path,
    node_id: str,
    etcd_urls: list[str],
    listen: tuple[str, int],
    training: bool,
    retain_seconds: float,
) -> int:
    chain = open_node(directory, node_id, etcd_urls, training, retain_seconds)
    engine = cast(ConsortiumEngine, chain.engine)
    runner: web.AppRunner | None = None
    try:
        await wait_ready(engine.etcd, 30.0)
        app = build_app(chain, [no_rotation], VERIFY_LIMIT)
        peers.add_routes(app)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, listen[0], listen[1])
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        host = f"[{listen[0]}]" if ":" in listen[0] else listen[0]
        engine.url = f"http://{host}:{port}"
        start_tasks(chain)
        ready: dict[str, Any] = {
            "event": "ready",
            "url": f"http://{host}:{port}",
            "node_id": node_id,
            "chain_id": chain.chain_id,
            "training": training,
            "height": engine.height,
            "admin_token_file": str(directory / "admin.token"),
        }
        print(json.dumps(ready), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        if runner is not None:
            with contextlib.suppress(Exception):
                await runner.cleanup()
        await engine.stop()
        chain.close()
    return 0


def run(
    directory: Path,
    node_id: str,
    etcd: str,
    listen: tuple[str, int],
    training: bool,
    retain_seconds: float = 3600.0,
) -> int:
    urls = [u.strip() for u in etcd.split(",") if u.strip()]
    if not urls:
        raise ValueError("--etcd: give at least one etcd client URL")
    try:
        return asyncio.run(serve(directory, node_id, urls, listen, training, retain_seconds))
    except (identity.SetupError, ChainSetupError) as exc:
        raise ValueError(str(exc)) from None
