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

from device.protocol import trust
from device.protocol.clock import SystemClock
from device.protocol.keys import KeyPair
from hostsim.bureau import BUREAU_KEY_FILE, Bureau
from hostsim.chain import rotation, wire
from hostsim.chain.api import build_app, errors, require_admin
from hostsim.chain.errors import ChainError, Code
from hostsim.chain.ledger import Ledger
from hostsim.chain.node import Chain, ChainSetupError
from hostsim.chain.queries import CHAIN
from hostsim.chain.ratelimit import VERIFY_LIMIT
from hostsim.consortium import epochs, forward, housekeeping, identity, peers
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
        current = _current_consortium(ledger, me, bureau)
        nodes = ConsortiumNodes(node_id, me.key, current)
        engine = ConsortiumEngine(
            ledger,
            nodes,
            bureau,
            PinnedClock(SystemClock()),
            Etcd(etcd_urls),
            chain_id=current.chain_id,
            training=training,
            consortium=current.raw,
            retain_seconds=retain_seconds,
        )
        if ledger.get_meta(rotation.EPOCHS_META) is not None:
            engine.blocks.attest_from(rotation.load_epochs(ledger)[-1].from_height)
        acts = ConsortiumActs(engine)
    except BaseException:
        ledger.close()
        raise
    chain = Chain(
        directory,
        ledger,
        nodes,
        bureau,
        engine,
        acts,
        current.chain_id,
        training,
        current.raw,
        rotation.load_endorsements(ledger.get_meta(rotation.ENDORSEMENTS_META)),
    )
    engine.epoch_listeners.append(lambda raw, signed: _epoch_changed(chain, raw, signed))
    return chain


def _current_consortium(
    ledger: Ledger, me: identity.Identity, bureau: Bureau
) -> trust.ConsortiumKeys:
    """The epoch in force: the ledger's (it follows epoch changes), or the directory's
    object for a new ledger. Refuses a ledger of another consortium, and a node whose key
    a later epoch replaced."""
    recorded = ledger.get_meta("consortium")
    if recorded is None:
        with ledger.transaction():
            ledger.set_meta("training", bytes([me.consortium.training]))
            ledger.set_meta("chain_id", me.consortium.chain_id.encode())
            ledger.set_meta("consortium", me.consortium.raw)
            ledger.set_meta("bureau_key", bureau.public_key)
        return me.consortium
    try:
        known = [e.consortium for e in rotation.load_epochs(ledger)]
    except ValueError as exc:
        raise identity.SetupError(str(exc)) from None
    if me.consortium.raw not in known:
        raise identity.SetupError("the ledger was made for another consortium")
    current = trust.open_consortium(recorded, bureau.public_key)
    if current.nodes.get(me.node_id) != me.key.public_key:
        raise identity.SetupError(
            f"epoch {current.epoch} replaced this node's key: it signs nothing any more;"
            " a replacing node starts from a new directory (docs/consortium.md)"
        )
    return current


def _epoch_changed(chain: Chain, raw: bytes, endorsements: list[Any]) -> None:
    """What the API serves and the directory's object follow the epoch in force."""
    chain.consortium, chain.endorsements = raw, endorsements
    identity.write_public(chain.directory / identity.CONSORTIUM_FILE, raw)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def rotation_by_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    """`POST /v1/consortium/rotate` on a consortium node: one node added or one node's key
    replaced (`{"node_id", "public_key"}`), signed by the bureau's node and applied by
    every node at the same log position (`epochs.py`)."""
    if request.path != "/v1/consortium/rotate" or request.method != "POST":
        return await handler(request)
    require_admin(request)
    chain = request.app[CHAIN]
    body = await wire.read_body(request, wire.FLAT)
    if set(body) != {"node_id", "public_key"}:
        raise ChainError(
            Code.BAD_REQUEST,
            'the body is {"node_id", "public_key": hex}: one node added or its key replaced',
        )
    raw = epochs.next_consortium(chain, body["node_id"], body["public_key"])
    out = await cast(ConsortiumActs, chain.acts).new_epoch(raw, wire.wait_param(request, 60.0))
    return wire.respond(
        request,
        {
            "chain_id": out["chain_id"],
            "epoch": out["epoch"],
            "endorsed_by": len(chain.endorsements),
            "from_height": chain.engine.blocks.current_from,
            "consortium": raw if wire.wants_cbor(request) else wire.b64(raw),
        },
        status=201,
    )


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
        # errors outermost too: the consortium's own middlewares refuse with ChainErrors
        app = build_app(chain, [errors, rotation_by_log, forward.bureau_acts], VERIFY_LIMIT)
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
