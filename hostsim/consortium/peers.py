"""Catching up from peers: final blocks fetched from another node, checked, written.

A node that was down catches up from the etcd log as long as the log still
holds what it missed (the proposer keeps every entry until every node's
watermark passed it, or until a node has been gone `RETAIN_SECONDS`). Past
that, and whenever a quorum finalized a header this node did not build, it
fetches the final blocks from a peer (`GET /peer/blocks`, node-to-node, each
request signed with the asking node's key) and checks each as a device
would: canonical header, link to its tip, Merkle root over the bodies, 2f+1
signatures of the consortium. Trust in the peer is not needed, only in the
quorum. The peer's ordering watermark, read with its blocks, lets the node
go on from the etcd log where the peer is.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import aiohttp
from aiohttp import web

from device.protocol import codec, merkle, trust, untrusted
from device.protocol.document import DocumentError, parse_document
from device.protocol.keys import verify
from device.protocol.status import DeviceError
from hostsim.chain import rotation
from hostsim.chain.blocks import Block
from hostsim.chain.errors import ChainError, Code
from hostsim.chain.queries import CHAIN
from hostsim.chain.state import TipState
from hostsim.chain.tx import Tx, TxType, decode_act, document_tx
from hostsim.consortium import epochs
from hostsim.consortium.engine import REV_META, SEQ_META, ConsortiumEngine
from hostsim.consortium.etcd import EtcdError, prefix_end, read_bounded

log = logging.getLogger("taxctl.consortium")

PEER_DOMAIN = "taxctl/peer/v1"
PEER_SKEW = 60.0
BLOCKS_PER_ANSWER = 64
MAX_ANSWER = 64 * 1024 * 1024
ANSWER_LIMITS = untrusted.CHAIN_ANSWER.allowing(max_depth=6)


class CatchUpFailed(Exception):
    """No peer gave blocks that check out."""


def _message(node_id: str, at: int, path: str) -> bytes:
    return f"{PEER_DOMAIN} {node_id} {at} {path}".encode()


def authorization(engine: ConsortiumEngine, path: str) -> str:
    at = int(time.time())
    signature = engine.members.key.sign(_message(engine.node_id, at, path))
    return f"Node {engine.node_id} {at} {signature.hex()}"


def _check_peer(engine: ConsortiumEngine, request: web.Request) -> None:
    parts = request.headers.get("Authorization", "").split(" ")
    refused = ChainError(Code.UNAUTHORIZED, "a peer request is signed by a consortium node")
    if len(parts) != 4 or parts[0] != "Node" or not parts[2].isdigit() or len(parts[2]) > 12:
        raise refused
    public = engine.members.members.get(parts[1])
    try:
        signature = bytes.fromhex(parts[3])
    except ValueError:
        raise refused from None
    at = int(parts[2])
    if public is None or abs(at - time.time()) > PEER_SKEW:
        raise refused
    if not verify(public, _message(parts[1], at, request.path_qs), signature):
        raise refused


async def serve_blocks(request: web.Request) -> web.Response:
    """Final blocks from `from` on, with their transactions' bodies, and this node's
    watermark at the same instant (nothing awaits in between)."""
    chain = request.app[CHAIN]
    engine = chain.engine
    assert isinstance(engine, ConsortiumEngine)
    _check_peer(engine, request)
    text = request.query.get("from", "")
    if not text.isdigit() or len(text) > 12:
        raise ChainError(Code.BAD_REQUEST, "from is a height")
    start = int(text)
    blocks = []
    for height in range(start, min(engine.height, start + BLOCKS_PER_ANSWER - 1) + 1):
        row = chain.ledger.block(height)
        if row is None:
            break
        txs = chain.ledger.block_txs(height)
        blocks.append(
            {
                "header": row.header,
                "signatures": row.signatures,
                "txs": [{"type": t.type, "body": t.body} for t in txs],
            }
        )
    answer = {
        "seq": engine.seq,
        "rev": engine.rev,
        "height": engine.height,
        "blocks": blocks,
        "epochs": [e.record() for e in rotation.load_epochs(chain.ledger)],
    }
    return web.Response(body=codec.encode(answer), content_type="application/cbor")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/peer/blocks", serve_blocks)


async def peer_urls(engine: ConsortiumEngine) -> list[str]:
    """Other nodes' API URLs, as their lease-held `alive/` keys name them."""
    prefix = engine.keys.alive
    out = []
    for kv in await engine.etcd.range(prefix, prefix_end(prefix)):
        node_id = kv.key[len(prefix) :].decode("utf-8", "replace")
        url = kv.value.decode("ascii", "replace")
        if node_id != engine.node_id and url.startswith("http://") and len(url) < 200:
            out.append(url)
    return out


async def catch_up(engine: ConsortiumEngine) -> None:
    """Fetch and write every final block this node lacks from the first peer that has
    them; the node's watermark becomes that peer's. CatchUpFailed if none could."""
    for url in await peer_urls(engine):
        try:
            while True:
                answer = await _fetch(engine, url, engine.height + 1)
                await _write(engine, answer)
                if engine.height >= answer["height"]:
                    _adopt_watermark(engine, answer)
                    return
        except (CatchUpFailed, aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("catching up from %s: %s", url, str(exc)[:200])
    raise CatchUpFailed("no peer had the blocks this node lacks")


async def _fetch(engine: ConsortiumEngine, url: str, start: int) -> dict[str, Any]:
    path = f"/peer/blocks?from={start}"
    timeout = aiohttp.ClientTimeout(total=60)
    headers = {"Authorization": authorization(engine, path)}
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(url + path, headers=headers) as resp,
    ):
        if resp.status != 200:
            raise CatchUpFailed(f"HTTP {resp.status}")
        try:
            raw = await read_bounded(resp.content, MAX_ANSWER)
        except EtcdError:
            raise CatchUpFailed("answer too large") from None
    try:
        answer = codec.decode(raw, ANSWER_LIMITS)
    except codec.CodecError as exc:
        raise CatchUpFailed(f"answer does not decode: {exc}") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("blocks"), list):
        raise CatchUpFailed("answer is not a list of blocks")
    for name in ("seq", "rev", "height"):
        if type(answer.get(name)) is not int:
            raise CatchUpFailed(f"answer without its {name}")
    if answer["height"] > engine.height and not answer["blocks"]:
        raise CatchUpFailed("the peer is ahead but sent no block")
    return answer


async def _write(engine: ConsortiumEngine, answer: dict[str, Any]) -> None:
    epochs_ = _peer_epochs(engine, answer.get("epochs"))
    keys = epochs.in_force(epochs_, engine.bureau.public_key, engine.chain_id)
    for entry in answer["blocks"]:
        block, txs = _checked(engine, entry, epochs.consortium_at(keys, engine.height + 1))
        await engine.commit(block, txs, {}, tip=False)
    # the tip state is rebuilt from the ledger the blocks went into
    engine.state = TipState(
        engine.ledger, engine.bureau.open_certificate, engine.bureau.open_segment
    )
    engine.state.load_held()
    engine.on_state_replaced()
    answer["_epochs"] = epochs_


def _peer_epochs(engine: ConsortiumEngine, value: object) -> list[rotation.Epoch]:
    """The peer's epoch records; they must hold the consortium this node is in."""
    if not isinstance(value, list) or not value or len(value) > 1000:
        raise CatchUpFailed("the answer carries no epoch records")
    out = []
    for entry in value:
        if not isinstance(entry, dict):
            raise CatchUpFailed("an epoch record is not a map")
        raw, signed, first = (
            entry.get("consortium"),
            entry.get("endorsements"),
            entry.get("from_height"),
        )
        if not (isinstance(raw, bytes) and isinstance(signed, list) and type(first) is int):
            raise CatchUpFailed("an epoch record is malformed")
        out.append(rotation.Epoch(raw, signed, first))
    if engine.members_raw not in [e.consortium for e in out]:
        raise CatchUpFailed("the peer does not know this node's epoch yet")
    try:
        epochs.in_force(out, engine.bureau.public_key, engine.chain_id)
    except ValueError as exc:
        raise CatchUpFailed(f"epoch records: {str(exc)[:100]}") from None
    return out


def _adopt_watermark(engine: ConsortiumEngine, answer: dict[str, Any]) -> None:
    """The peer's watermark and epochs, once this node holds the same blocks."""
    if engine.height != answer["height"] or answer["seq"] <= engine.seq:
        return
    engine.seq, engine.rev = answer["seq"], answer["rev"]
    meta = {SEQ_META: str(engine.seq).encode(), REV_META: str(engine.rev).encode()}
    records: list[rotation.Epoch] = answer["_epochs"]
    last = records[-1]
    if last.consortium != engine.members_raw or rotation.load_epochs(engine.ledger) != records:
        meta.update(
            {
                "consortium": last.consortium,
                rotation.ENDORSEMENTS_META: codec.encode(last.endorsements),
                rotation.EPOCHS_META: codec.encode([e.record() for e in records]),
            }
        )
    engine.record_meta(meta)
    if last.consortium != engine.members_raw:
        epochs.switch(engine, last.consortium, last.endorsements, last.from_height)
    log.info("caught up from a peer to height %d (proposal %d)", engine.height, engine.seq)


def _checked(
    engine: ConsortiumEngine, entry: object, consortium: trust.ConsortiumKeys
) -> tuple[Block, list[Tx]]:
    if not isinstance(entry, dict):
        raise CatchUpFailed("a block is not a map")
    header_raw, signatures_raw, bodies = (
        entry.get("header"),
        entry.get("signatures"),
        entry.get("txs"),
    )
    if not isinstance(header_raw, bytes) or not isinstance(signatures_raw, bytes):
        raise CatchUpFailed("a block's header and signatures are bytes")
    if not isinstance(bodies, list):
        raise CatchUpFailed("a block's transactions are a list")
    try:
        header = codec.decode_canonical(header_raw)
        signatures = codec.decode(signatures_raw)
    except codec.CodecError as exc:
        raise CatchUpFailed(f"a block does not decode: {exc}") from None
    if not isinstance(header, dict) or set(header) != trust.HEADER_KEYS:
        raise CatchUpFailed("a header is malformed")
    if (header["chain_id"], header["height"], header["prev_hash"]) != (
        engine.chain_id,
        engine.height + 1,
        engine.tip_hash,
    ):
        raise CatchUpFailed(f"block {engine.height + 1} does not follow this node's tip")
    try:
        trust.check_quorum(header, signatures, consortium)
    except DeviceError as exc:
        raise CatchUpFailed(f"block {header['height']}: {exc.detail}") from None
    txs = [_tx(engine, body) for body in bodies]
    hashes = [t.hash for t in txs]
    if header["tx_count"] != len(txs) or merkle.root(hashes) != header["merkle_root"]:
        raise CatchUpFailed(f"block {header['height']}: transactions do not match the header")
    block = Block(
        header, hashlib.sha256(header_raw).digest(), signatures, hashes, merkle.levels(hashes)
    )
    return block, txs


def _tx(engine: ConsortiumEngine, item: object) -> Tx:
    body = item.get("body") if isinstance(item, dict) else None
    kind = item.get("type") if isinstance(item, dict) else None
    if not isinstance(body, bytes) or kind not in {t.value for t in TxType}:
        raise CatchUpFailed("a transaction is a type and a body")
    try:
        if kind == TxType.DOCUMENT:
            return document_tx(parse_document(body))
        fields = decode_act(body)
        fields = {k: v for k, v in fields.items() if k != "type"}
        if kind == TxType.REGISTER:
            fields["_cert"] = engine.bureau.open_certificate(fields["certificate"])
            fields["_segments"] = [engine.bureau.open_segment(s) for s in fields["segments"]]
        elif kind == TxType.SEGMENT:
            fields["_segment"] = engine.bureau.open_segment(fields["segment"])
    except (DocumentError, ValueError, KeyError, TypeError, ChainError) as exc:
        raise CatchUpFailed(f"a transaction does not check: {str(exc)[:100]}") from None
    device_id = fields.get("device_id")
    return Tx(
        hashlib.sha256(body).digest(),
        TxType(kind),
        body,
        device_id if isinstance(device_id, str) else None,
        None,
        None,
        fields,
    )
