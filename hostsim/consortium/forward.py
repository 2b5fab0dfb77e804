"""Bureau requests on a node without the bureau's key: forwarded to the bureau's node.

A device registering from a CSR, or asking for a segment with a signed
request, may reach any node (syncd fails over between them). A node that
cannot sign for the bureau passes the request on unchanged to the bureau's
node — its URL is the one that node publishes under its lease
(`alive/bureau`) — and returns that node's answer as it came (status, type,
body; bounded). The bureau's node decides and logs the act once
(`decided.py`); every node applies it. A forwarded request is never
forwarded again, so a misconfigured bureau's node cannot loop.

An enrolment code is issued by the bureau's node only: on another node
`POST /admin/enrolments` is refused with the bureau's node's URL, since the
admin token there is another one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import cast

import aiohttp
from aiohttp import web

from hostsim.chain import wire
from hostsim.chain.api import DEFAULT_WAIT, require_admin
from hostsim.chain.errors import ChainError, Code
from hostsim.chain.queries import CHAIN
from hostsim.consortium import decided, identity
from hostsim.consortium.acts import ConsortiumActs
from hostsim.consortium.engine import ConsortiumEngine
from hostsim.consortium.etcd import EtcdError, read_bounded

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
FORWARDED = "X-Taxctl-Forwarded"
MAX_ANSWER = 1024 * 1024


async def bureau_url(engine: ConsortiumEngine) -> str | None:
    try:
        kv = await engine.etcd.get(engine.keys.alive_key(identity.BUREAU_NODE))
    except EtcdError:
        return None
    url = kv.value.decode("ascii", "replace") if kv is not None else ""
    return url if url.startswith("http://") and len(url) < 200 else None


async def _needs_bureau(request: web.Request) -> bool:
    """A registration from a CSR, or a segment for a signed request."""
    if request.method != "POST":
        return False
    parts = request.path.strip("/").split("/")
    if parts == ["v1", "devices"]:
        return "csr" in await wire.read_body(request, wire.LISTS)
    if len(parts) == 4 and parts[:2] == ["v1", "devices"] and parts[3] == "segments":
        return "request" in await wire.read_body(request, wire.FLAT)
    return False


@web.middleware
async def bureau_acts(request: web.Request, handler: Handler) -> web.StreamResponse:
    chain = request.app[CHAIN]
    acts = cast(ConsortiumActs, chain.acts)
    engine = cast(ConsortiumEngine, chain.engine)
    if request.path == "/admin/enrolments" and request.method == "POST":
        require_admin(request)
        if not decided.signs_for_bureau(acts):
            url = await bureau_url(engine)
            raise ChainError(
                Code.UNAVAILABLE,
                "enrolment codes are issued by the bureau's node"
                f" ({url or 'its URL is not known now'}), with its admin token",
            )
        body = await wire.read_body(request, wire.FLAT)
        issued = await acts.issue_enrolment(body, wire.wait_param(request, DEFAULT_WAIT))
        return wire.respond(request, issued, status=201)
    if decided.signs_for_bureau(acts) or not await _needs_bureau(request):
        return await handler(request)
    if request.headers.get(FORWARDED):
        raise ChainError(Code.UNAVAILABLE, "a forwarded request reached a node without the key")
    return await _forward(request, engine)


async def _forward(request: web.Request, engine: ConsortiumEngine) -> web.StreamResponse:
    url = await bureau_url(engine)
    unreachable = ChainError(
        Code.UNAVAILABLE,
        "this needs the bureau's signature and only the bureau's node"
        f" ({url or 'not reachable now'}) holds its key; send again later or to it",
    )
    if url is None:
        raise unreachable
    headers = {FORWARDED: engine.node_id}
    for name in ("Content-Type", "Accept"):
        if name in request.headers:
            headers[name] = request.headers[name]
    timeout = aiohttp.ClientTimeout(total=wire.wait_param(request, DEFAULT_WAIT) + 15)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url + request.path_qs, data=await request.read(), headers=headers) as r,
        ):
            body = await read_bounded(r.content, MAX_ANSWER)
            return web.Response(body=body, status=r.status, content_type=r.content_type)
    except (aiohttp.ClientError, TimeoutError, OSError, EtcdError):
        raise unreachable from None
