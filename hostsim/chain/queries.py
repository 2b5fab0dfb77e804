"""Read-only routes of the chain API: health, consortium, devices, blocks, invoices, 查验.

Health, consortium, blocks and transaction status are public (they carry no
document). A device, its documents and an invoice need a reader's credential
(hostsim/chain/roles.py); 查验 is public and rate-limited per client.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from device.protocol import codec, qr, trust
from device.protocol.chainapi import SubmitStatus
from device.protocol.document import parse_document
from device.protocol.invoice import is_invoice_code, is_invoice_number
from hostsim.bureau import public_view
from hostsim.chain import checking, roles, wire
from hostsim.chain.checking import invoice_state
from hostsim.chain.errors import ChainError, Code
from hostsim.chain.node import Chain
from hostsim.chain.ratelimit import Buckets
from hostsim.chain.tx import TxType

HASH = re.compile(r"[0-9a-f]{64}")


CHAIN: web.AppKey[Chain] = web.AppKey("chain", Chain)
VERIFY_BUCKETS: web.AppKey[Buckets] = web.AppKey("verify_buckets", Buckets)
DEVICE_ID = re.compile(r"TC[0-9A-Z]{12}")


def _chain(request: web.Request) -> Chain:
    return request.app[CHAIN]


def device_id_param(request: web.Request) -> str:
    device_id = request.match_info["device_id"]
    if DEVICE_ID.fullmatch(device_id) is None:
        raise ChainError(Code.BAD_REQUEST, "a device id is TC followed by 12 capitals or digits")
    return device_id


def invoice_params(request: web.Request) -> tuple[str, str]:
    code, number = request.match_info["code"], request.match_info["number"]
    if not (is_invoice_code(code) and is_invoice_number(number)):
        raise ChainError(Code.BAD_REQUEST, "an invoice code is 12 digits and a number 8 digits")
    return code, number


def int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    if not re.fullmatch(r"[0-9]{1,12}", text) or not low <= int(text) <= high:
        raise ChainError(Code.BAD_REQUEST, f"{name} is an integer from {low} to {high}")
    return int(text)


async def health(request: web.Request) -> web.Response:
    chain = _chain(request)
    engine = chain.engine
    return wire.respond(
        request,
        {
            "status": "ok" if engine.write_error is None else "degraded",
            "chain_id": chain.chain_id,
            "training": chain.training,
            "height": engine.height,
            "nodes": len(chain.nodes.public_keys),
            "reachable": len(chain.nodes.available()),
            "quorum": chain.nodes.quorum,
            "finalizing": chain.nodes.has_quorum() and engine.write_error is None,
            "mempool": len(engine.mempool),
            "held": engine.state.held_count(),
            "error": engine.write_error,
            **engine.health(),
        },
    )


async def consortium(request: web.Request) -> web.Response:
    chain = _chain(request)
    return wire.respond(
        request,
        {
            "chain_id": chain.chain_id,
            "epoch": trust.open_consortium(chain.consortium, chain.bureau.public_key).epoch,
            "training": chain.training,
            "quorum": chain.nodes.quorum,
            "bureau_key": chain.bureau.public_key,
            "nodes": [
                {"node_id": n, "public_key": k} for n, k in sorted(chain.nodes.public_keys.items())
            ],
            "consortium": chain.consortium
            if wire.wants_cbor(request)
            else wire.b64(chain.consortium),
            # the previous epoch's nodes over this one (empty at epoch 1); hex in JSON
            "endorsements": chain.endorsements,
        },
    )


async def device(request: web.Request) -> web.Response:
    chain = _chain(request)
    device_id = device_id_param(request)
    reader = roles.reader_of(chain, request)
    record = chain.engine.state.devices.get(device_id)
    if record is None:
        raise ChainError(Code.UNKNOWN_DEVICE, f"no device {device_id} on this chain")
    roles.require(reader, seller=record.certificate.taxpayer.get("tax_id"))
    last_counter, last_hash = chain.ledger.device_tip(device_id) or (0, bytes(32))
    evidence = [
        {
            "counter": e["counter"],
            "code": e["code"],
            "number": e["number"],
            "rule": e["rule"],
            "at": e["at"],
            "existing_hash": e["existing_hash"],
            "existing_cose_sign1": wire.b64(e["existing_body"]),
            "offending_hash": e["offending_hash"],
            "offending_cose_sign1": wire.b64(e["offending_body"]),
        }
        for e in chain.ledger.equivocations(device_id)
    ]
    return wire.respond(
        request,
        {
            "device_id": device_id,
            "public_key": record.public_key,
            "last_counter": last_counter,
            "last_hash": last_hash,
            "accepted_counter": record.last_counter,
            "registration": {**public_view(record.certificate), "height": record.registered_height},
            "revoked": record.revoked_height is not None,
            "revoked_height": record.revoked_height,
            "revoked_reason": record.revoked_reason,
            "segments": [{"code": s.code, "start": s.start, "end": s.end} for s in record.segments],
            "held": sorted(chain.engine.state.held.get(device_id, {})),
            "equivocations": evidence,
        },
    )


async def device_documents(request: web.Request) -> web.Response:
    chain = _chain(request)
    device_id = device_id_param(request)
    reader = roles.reader_of(chain, request)
    record = chain.engine.state.devices.get(device_id)
    if record is None:
        raise ChainError(Code.UNKNOWN_DEVICE, f"no device {device_id} on this chain")
    roles.require(reader, seller=record.certificate.taxpayer.get("tax_id"))
    after = int_param(request, "after", 0, 0, 2**62)
    limit = int_param(request, "limit", 100, 1, 1000)
    rows = chain.ledger.device_documents(device_id, after, limit)
    cbor = wire.wants_cbor(request)
    return wire.respond(
        request,
        {
            "device_id": device_id,
            "documents": [
                {
                    "counter": r.counter,
                    "hash": r.hash,
                    "height": r.height,
                    "position": r.position,
                    "cose_sign1": r.body if cbor else wire.b64(r.body),
                }
                for r in rows
            ],
        },
    )


async def tx_status(request: web.Request) -> web.Response:
    chain = _chain(request)
    text = request.match_info["hash"]
    if HASH.fullmatch(text) is None:
        raise ChainError(Code.BAD_REQUEST, "a transaction hash is 64 lowercase hex digits")
    tx_hash = bytes.fromhex(text)
    engine = chain.engine
    row = chain.ledger.tx(tx_hash)
    if row is not None:
        out: dict[str, Any] = {
            "hash": tx_hash,
            "status": SubmitStatus.COMMITTED.value,
            "type": row.type,
            "height": row.height,
            "position": row.position,
        }
        if row.type == TxType.DOCUMENT:
            out["receipt"] = engine.receipt(row.height, row.position, row.device_id, row.counter)
        return wire.respond(request, out)
    if tx_hash in engine.state.pending:
        return wire.respond(request, {"hash": tx_hash, "status": SubmitStatus.PENDING.value})
    if tx_hash in engine.state.held_hashes:
        return wire.respond(request, {"hash": tx_hash, "status": SubmitStatus.HELD.value})
    rejection = engine.rejections.get(tx_hash)
    if rejection is not None:
        return wire.respond(
            request,
            {
                "hash": tx_hash,
                "status": SubmitStatus.REJECTED.value,
                "code": rejection.code.value,
                "message": rejection.message,
            },
        )
    raise ChainError(Code.NOT_FOUND, f"no transaction {text} is known")


async def block(request: web.Request) -> web.Response:
    chain = _chain(request)
    text = request.match_info["height"]
    height = chain.engine.height if text == "latest" else None
    if height is None:
        if not re.fullmatch(r"[0-9]{1,12}", text):
            raise ChainError(Code.BAD_REQUEST, "a height is a positive integer or 'latest'")
        height = int(text)
    row = chain.ledger.block(height)
    if row is None:
        raise ChainError(
            Code.NOT_FOUND, f"no block {height}; the chain is at {chain.engine.height}"
        )
    txs = chain.ledger.block_txs(height)
    return wire.respond(
        request,
        {
            "height": height,
            "hash": row.hash,
            "header": codec.decode(row.header),
            "signatures": codec.decode(row.signatures),
            "transactions": [
                {"hash": t.hash, "type": t.type, "device_id": t.device_id, "counter": t.counter}
                for t in txs
            ],
        },
    )


async def invoice(request: web.Request) -> web.Response:
    chain = _chain(request)
    code, number = invoice_params(request)
    reader = roles.reader_of(chain, request)
    row = chain.ledger.invoice(code, number)
    if row is None:
        raise ChainError(Code.NOT_FOUND, f"no invoice {code}/{number} on the chain")
    roles.require(reader, seller=row["seller_tax_id"], buyer=row["buyer_tax_id"])
    tx = chain.ledger.tx(bytes(row["hash"]))
    assert tx is not None
    doc = parse_document(tx.body)
    return wire.respond(
        request,
        {
            "code": code,
            "number": number,
            "hash": tx.hash,
            "height": tx.height,
            "state": invoice_state(row),
            "credited": row["credited"],
            "remaining": row["total"] - row["credited"] if row["kind"] == "invoice" else 0,
            "claimed_by": row["claimed_by"],
            "cose_sign1": tx.body if wire.wants_cbor(request) else wire.b64(tx.body),
            "document": doc.payload,
            "history": chain.ledger.history(code, number),
        },
    )


# Answers that show the asker does not hold the receipt: each costs one of its questions.
MISSES = frozenset({"mismatch", "not_found", "forged"})


def limit_verify(request: web.Request) -> None:
    """Refuse a client that has no 查验 question left (429 rate_limited)."""
    buckets = request.app.get(VERIFY_BUCKETS)
    if buckets is not None:
        buckets.admit(request.remote or "")


def verification(request: web.Request, query: qr.VerificationQuery) -> dict[str, Any]:
    """The 查验 answer. Only a miss is counted against the client: brute force is all
    misses, while a till or syncd checking the receipts it printed asks freely."""
    chain = _chain(request)
    answer = checking.verification(chain, query, chain.engine.clock.now())
    buckets = request.app.get(VERIFY_BUCKETS)
    if buckets is not None and answer.get("result") in MISSES:
        buckets.spend(request.remote or "")
    return answer


async def verify_post(request: web.Request) -> web.Response:
    limit_verify(request)
    body = await wire.read_body(request, wire.FLAT)
    return wire.respond(request, verification(request, checking.query_from(body)))


async def verify_get(request: web.Request) -> web.Response:
    names = {
        "c": "code",
        "n": "number",
        "d": "date",
        "k": "check_code",
        "t": "total",
        "q": "payload",
    }
    limit_verify(request)
    fields = {names.get(k, k): v for k, v in request.query.items()}
    return wire.respond(request, verification(request, checking.query_from(fields)))


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/v1/health", health)
    router.add_get("/v1/consortium", consortium)
    router.add_get("/v1/devices/{device_id}", device)
    router.add_get("/v1/devices/{device_id}/documents", device_documents)
    router.add_get("/v1/tx/{hash}", tx_status)
    router.add_get("/v1/blocks/{height}", block)
    router.add_get("/v1/invoices/{code}/{number}", invoice)
    router.add_post("/v1/verify", verify_post)
    router.add_get("/v1/verify", verify_get)
