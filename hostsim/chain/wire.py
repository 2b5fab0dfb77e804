"""Request and response bodies of the chain API: JSON or CBOR, and their limits.

Documents travel as CBOR byte strings (`application/cbor`) or base64 in
JSON. A response is CBOR when the request's Accept asks for it, so a host
can pass receipts to a device untouched; otherwise JSON, where byte
strings become hex (hashes, keys, signatures) except document and
certificate bodies, which are base64 under names that say so.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import cbor2
from aiohttp import web

from device.protocol import codec
from hostsim.chain.errors import ChainError, Code

CBOR = "application/cbor"
MAX_BODY = 32 * 1024 * 1024
MAX_BATCH = 1000
MAX_WAIT = 30.0


def wants_cbor(request: web.Request) -> bool:
    return CBOR in request.headers.get("Accept", "")


async def read_body(request: web.Request) -> Any:
    """The decoded body (a map), from JSON or CBOR; anything else is a 4xx."""
    kind = request.content_type
    raw = await request.read()
    if kind == CBOR:
        try:
            value = cbor2.loads(raw)
        except Exception as exc:  # cbor2 raises several types on garbage
            raise ChainError(Code.BAD_REQUEST, f"body is not valid CBOR: {exc}") from None
    elif kind in ("application/json", "") or kind.endswith("+json"):
        try:
            value = json.loads(raw or b"{}")
        except (ValueError, UnicodeDecodeError) as exc:
            raise ChainError(Code.BAD_REQUEST, f"body is not valid JSON: {exc}") from None
    else:
        raise ChainError(
            Code.UNSUPPORTED_MEDIA_TYPE, f"send application/json or {CBOR}, not {kind}"
        )
    if not isinstance(value, dict):
        raise ChainError(Code.BAD_REQUEST, "the body must be an object")
    return value


def blob(value: Any, name: str, *, cbor: bool) -> bytes:
    """A byte-string field: raw in CBOR, base64 in JSON."""
    if cbor and isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ChainError(Code.BAD_REQUEST, f"{name} is not valid base64") from None
    raise ChainError(Code.BAD_REQUEST, f"{name} must be {'bytes or ' if cbor else ''}base64 text")


def blobs(value: Any, name: str, *, cbor: bool, limit: int) -> list[bytes]:
    if not isinstance(value, list):
        raise ChainError(Code.BAD_REQUEST, f"{name} must be a list")
    if len(value) > limit:
        raise ChainError(
            Code.BATCH_TOO_LARGE, f"{name} holds {len(value)} entries; at most {limit}"
        )
    return [blob(v, f"{name}[{i}]", cbor=cbor) for i, v in enumerate(value)]


def wait_param(request: web.Request, default: float) -> float:
    text = request.query.get("wait")
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ChainError(Code.BAD_REQUEST, "wait is a number of seconds") from None
    if not 0 <= value <= MAX_WAIT:
        raise ChainError(Code.BAD_REQUEST, f"wait is between 0 and {MAX_WAIT:g} seconds")
    return value


RECEIPT_FORMS = ("full", "compact")


def receipts_param(request: web.Request) -> str:
    """`full` (each receipt carries its block's header and signatures) or `compact`."""
    value = request.query.get("receipts", "full")
    if value not in RECEIPT_FORMS:
        raise ChainError(Code.BAD_REQUEST, f"receipts is one of {', '.join(RECEIPT_FORMS)}")
    return value


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def respond(request: web.Request, body: dict[str, Any], status: int = 200) -> web.Response:
    if wants_cbor(request):
        return web.Response(body=cbor2.dumps(body), status=status, content_type=CBOR)
    return web.json_response(codec.json_view(body), status=status)


def error_response(exc: ChainError) -> web.Response:
    return web.json_response(exc.body(), status=exc.http_status)
