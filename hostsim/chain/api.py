"""The chain's HTTP API (docs/chain-openapi.yaml): routes that change state.

Read-only routes live in `queries.py`; the fault-injection admin API in
`faults.py`. Every refusal is a ChainError, turned into a 4xx (or 503)
with {"error": {"code", "message"}} by the middleware; an unexpected
exception is a 500 and a bug.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from device.protocol import taxid
from device.protocol.document import format_utc
from hostsim.bureau import buyer_key_hash
from hostsim.chain import page, queries, rotation, wire
from hostsim.chain.blocks import Block
from hostsim.chain.engine import DocumentOutcome
from hostsim.chain.errors import ChainError, Code
from hostsim.chain.node import Chain
from hostsim.chain.queries import CHAIN, VERIFY_BUCKETS, device_id_param
from hostsim.chain.ratelimit import VERIFY_LIMIT, Buckets, RateLimit

log = logging.getLogger("taxctl.chain.api")

DEFAULT_WAIT = 10.0
HTTP_CODES = {
    404: Code.NOT_FOUND,
    405: Code.METHOD_NOT_ALLOWED,
    413: Code.BODY_TOO_LARGE,
    415: Code.UNSUPPORTED_MEDIA_TYPE,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ChainError as exc:
        return wire.error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = HTTP_CODES.get(exc.status, Code.BAD_REQUEST)
        message = exc.reason if exc.status != 404 else f"no route {request.method} {request.path}"
        return wire.error_response(ChainError(code, message))


def chain_of(request: web.Request) -> Chain:
    return request.app[CHAIN]


def admin_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header.startswith("Bearer ") else None


def require_admin(request: web.Request) -> None:
    if not chain_of(request).bureau.is_admin(admin_token(request)):
        raise ChainError(Code.UNAUTHORIZED, "this needs the bureau's admin token (Bearer)")


# --- documents -----------------------------------------------------------------------------


def result_body(
    chain: Chain, result: DocumentOutcome, blocks: dict[int, Block] | None
) -> dict[str, Any]:
    """One document's result; with `blocks`, its receipt is compact and its block is
    added to `blocks` for the answer to list once."""
    out: dict[str, Any] = {"status": result.status.value}
    if result.hash is not None:
        out["hash"] = result.hash
        out["device_id"] = result.device_id
        out["counter"] = result.counter
    if result.height is not None and result.position is not None:
        block = chain.engine.block(result.height)
        out["receipt"] = block.receipt(
            result.position, result.device_id, result.counter, compact=blocks is not None
        )
        if blocks is not None:
            blocks[result.height] = block
    if result.code is not None:
        out["code"] = result.code.value
        out["message"] = result.message
        out.update(result.extra)
    return out


async def submit_documents(request: web.Request) -> web.Response:
    chain = chain_of(request)
    cbor = request.content_type == wire.CBOR
    body = await wire.read_body(request, wire.DOCUMENTS)
    raws = wire.blobs(body.get("documents"), "documents", cbor=cbor, limit=wire.MAX_BATCH)
    if not raws:
        raise ChainError(Code.BAD_REQUEST, "documents is empty")
    if chain.engine.mempool_full():
        raise ChainError(Code.UNAVAILABLE, "the chain is not finalizing and its mempool is full")
    wait = wire.wait_param(request, DEFAULT_WAIT)
    compact = wire.receipts_param(request) == "compact"
    results = await chain.engine.submit(raws, wait)
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status.value] = counts.get(r.status.value, 0) + 1
    blocks: dict[int, Block] | None = {} if compact else None
    answer: dict[str, Any] = {
        "height": chain.engine.height,
        "counts": counts,
        "results": [result_body(chain, r, blocks) for r in results],
    }
    if blocks is not None:
        answer["blocks"] = [blocks[h].attestation() for h in sorted(blocks)]
    return wire.respond(request, answer)


# --- devices -------------------------------------------------------------------------------


async def register_device(request: web.Request) -> web.Response:
    chain = chain_of(request)
    cbor = request.content_type == wire.CBOR
    body = await wire.read_body(request, wire.LISTS)
    csr = wire.blob(body["csr"], "csr", cbor=cbor) if "csr" in body else None
    cert = (
        wire.blob(body["certificate"], "certificate", cbor=cbor) if "certificate" in body else None
    )
    segments = wire.blobs(body.get("segments", []), "segments", cbor=cbor, limit=wire.MAX_SEGMENTS)
    out = await chain.acts.register(
        csr, cert, segments, wire.wait_param(request, DEFAULT_WAIT), body.get("enrolment_code")
    )
    return wire.respond(
        request,
        {
            "device_id": out["device_id"],
            "certificate": out["certificate"]
            if wire.wants_cbor(request)
            else wire.b64(out["certificate"]),
            "registered_height": out["registered_height"],
            "segments": [s if wire.wants_cbor(request) else wire.b64(s) for s in out["segments"]],
        },
        status=201,
    )


async def add_segment(request: web.Request) -> web.Response:
    chain = chain_of(request)
    device_id = device_id_param(request)
    cbor = request.content_type == wire.CBOR
    body = await wire.read_body(request, wire.FLAT)
    wait = wire.wait_param(request, DEFAULT_WAIT)
    if "request" in body:
        raw = wire.blob(body["request"], "request", cbor=cbor)
        seg = await chain.acts.allocate_signed(device_id, raw, wait)
    elif "segment" in body:
        seg = await chain.acts.record_segment(
            device_id, wire.blob(body["segment"], "segment", cbor=cbor), wait
        )
    else:
        count = body.get("count")
        if type(count) is not int:
            raise ChainError(Code.BAD_REQUEST, "give request (signed by the device) or segment")
        seg = await chain.acts.allocate(device_id, count, wait)
    return wire.respond(
        request,
        {
            "device_id": device_id,
            "code": seg.code,
            "start": seg.start,
            "end": seg.end,
            "segment": seg.raw if wire.wants_cbor(request) else wire.b64(seg.raw),
        },
        status=201,
    )


async def revoke_device(request: web.Request) -> web.Response:
    require_admin(request)
    chain = chain_of(request)
    device_id = device_id_param(request)
    body = await wire.read_body(request, wire.FLAT)
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip() or len(reason) > 200:
        raise ChainError(Code.BAD_REQUEST, "give a reason (1 to 200 characters)")
    height = await chain.acts.revoke(device_id, reason, wire.wait_param(request, DEFAULT_WAIT))
    return wire.respond(request, {"device_id": device_id, "revoked_height": height})


async def issue_enrolment(request: web.Request) -> web.Response:
    """An enrolment code for a taxpayer (admin only); shown once, the chain keeps its hash."""
    require_admin(request)
    body = await wire.read_body(request, wire.FLAT)
    issued = chain_of(request).acts.enrolments.issue(body)
    return wire.respond(request, issued.body(), status=201)


# --- buyers and claims ---------------------------------------------------------------------


async def enrol_buyer(request: web.Request) -> web.Response:
    require_admin(request)
    chain = chain_of(request)
    body = await wire.read_body(request, wire.FLAT)
    tax_id, name = body.get("tax_id"), body.get("name")
    problem = taxid.problem(tax_id)
    if problem is not None:
        raise ChainError(Code.BAD_REQUEST, f"tax_id: {problem}")
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise ChainError(Code.BAD_REQUEST, "give the buyer's name (1 to 100 characters)")
    key, key_hash = chain.bureau.new_buyer_key()
    buyer_id = f"B{key_hash[:6].hex().upper()}"
    chain.ledger.add_buyer(
        buyer_id, str(tax_id), name, key_hash, format_utc(chain.engine.clock.now())
    )
    return wire.respond(
        request, {"buyer_id": buyer_id, "tax_id": tax_id, "api_key": key}, status=201
    )


async def claim_invoice(request: web.Request) -> web.Response:
    chain = chain_of(request)
    token = admin_token(request)
    buyer = chain.ledger.buyer_by_key(buyer_key_hash(token)) if token else None
    if buyer is None:
        raise ChainError(Code.UNAUTHORIZED, "a claim needs a buyer's API key (Bearer)")
    code, number = queries.invoice_params(request)
    out = await chain.acts.claim(
        code, number, buyer[0], buyer[1], wire.wait_param(request, DEFAULT_WAIT)
    )
    return wire.respond(request, out, status=201)


async def rotate_consortium(request: web.Request) -> web.Response:
    """The bureau issues the next consortium epoch, endorsed by the current nodes; the
    body may name nodes whose keys it replaces (`{"replace": [...] | "all"}`)."""
    require_admin(request)
    chain = chain_of(request)
    body = await wire.read_body(request, wire.LISTS) if request.can_read_body else {}
    if set(body) - {"replace"}:
        raise ChainError(Code.BAD_REQUEST, 'the body is {"replace": [node ids] | "all"}')
    replace = rotation.replaced_ids(chain, body.get("replace"))
    rotated = await rotation.rotate(chain, replace)
    return wire.respond(
        request,
        {
            "chain_id": rotated.chain_id,
            "epoch": rotated.epoch,
            "endorsed_by": len(chain.endorsements),
            "replaced": replace,
            "from_height": chain.engine.blocks.current_from,
        },
        status=201,
    )


async def confirm_credit(request: web.Request) -> web.Response:
    chain = chain_of(request)
    token = admin_token(request)
    buyer = chain.ledger.buyer_by_key(buyer_key_hash(token)) if token else None
    if buyer is None:
        raise ChainError(
            Code.UNAUTHORIZED, "a credit confirmation needs a buyer's API key (Bearer)"
        )
    code, number = queries.invoice_params(request)
    body = await wire.read_body(request, wire.FLAT)
    out = await chain.acts.confirm_credit(
        code, number, buyer[0], body.get("amount"), wire.wait_param(request, DEFAULT_WAIT)
    )
    return wire.respond(request, out, status=201)


def build_app(
    chain: Chain,
    middlewares: list[Any] | None = None,
    verify_limit: RateLimit | None = VERIFY_LIMIT,
) -> web.Application:
    """The public API; `verify_limit` bounds each client's 查验 questions (None: unbounded,
    for a load test that asks from one address)."""
    app = web.Application(client_max_size=wire.MAX_BODY, middlewares=[*(middlewares or []), errors])
    app[CHAIN] = chain
    if verify_limit is not None:
        app[VERIFY_BUCKETS] = Buckets(verify_limit, chain.engine.clock)
    app.router.add_post("/v1/documents", submit_documents)
    app.router.add_post("/v1/devices", register_device)
    app.router.add_post("/v1/devices/{device_id}/segments", add_segment)
    app.router.add_post("/v1/devices/{device_id}/revoke", revoke_device)
    app.router.add_post("/v1/buyers", enrol_buyer)
    app.router.add_post("/admin/enrolments", issue_enrolment)
    app.router.add_post("/v1/invoices/{code}/{number}/claim", claim_invoice)
    app.router.add_post("/v1/invoices/{code}/{number}/credit-confirmations", confirm_credit)
    app.router.add_post("/v1/consortium/rotate", rotate_consortium)
    queries.add_routes(app.router)
    page.add_routes(app.router)
    return app
