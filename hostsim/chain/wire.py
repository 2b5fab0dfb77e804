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
from dataclasses import dataclass
from typing import Any

import cbor2
from aiohttp import web

from device.protocol import codec, untrusted
from hostsim.chain.errors import ChainError, Code

CBOR = "application/cbor"
MAX_BODY = 32 * 1024 * 1024
MAX_BATCH = 1000
MAX_SEGMENTS = 100
MAX_WAIT = 30.0
MAX_REASON_CHARS = 200  # of a refusal's message built from what a decoder said


@dataclass(frozen=True, slots=True)
class BodyRule:
    """What one route's body may be: its size, and the decoding policy for its values."""

    max_bytes: int
    limits: untrusted.Limits


# {"documents": [bytes, ...]}: a map of lists of strings, so depth 2. The item bound is
# the policy's default, not MAX_BATCH: decoding 20,000 strings costs milliseconds, and a
# batch somewhat over MAX_BATCH should still get its specific `batch_too_large`.
DOCUMENTS = BodyRule(MAX_BODY, untrusted.CBOR_BODY.allowing(max_depth=2))
# {"certificate"|"csr": bytes, "segments": [bytes, ...]} (up to MAX_SEGMENTS), or
# {"nodes": [text, ...]} on the admin API.
LISTS = BodyRule(1024 * 1024, untrusted.Limits(max_depth=2, max_items=4 * MAX_SEGMENTS + 64))
# A flat map of a few scalars: segments, revocation, buyers, 查验, fault settings.
FLAT = BodyRule(64 * 1024, untrusted.Limits(max_depth=1, max_items=64))


def wants_cbor(request: web.Request) -> bool:
    return CBOR in request.headers.get("Accept", "")


def _too_large(rule: BodyRule) -> ChainError:
    return ChainError(
        Code.BODY_TOO_LARGE, f"this route takes bodies of at most {rule.max_bytes} bytes"
    )


def _reason(exc: Exception) -> str:
    """A decoder's own words, shortened: they name a bound or a position, never the input,
    but a library's message is not ours to promise that of."""
    text = str(exc)
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS] + "…"


def is_json(kind: str) -> bool:
    return kind in ("application/json", "") or kind.endswith("+json")


def decode_body(raw: bytes, cbor: bool, limits: untrusted.Limits) -> Any:
    """A body's value, through the shared decoding policy; refusals are `bad_request`."""
    if cbor:
        try:
            return codec.decode(raw, limits)
        except codec.CodecError as exc:
            raise ChainError(Code.BAD_REQUEST, f"body refused: {_reason(exc)}") from None
    try:
        return untrusted.loads_json(raw or b"{}", limits)
    except untrusted.InputRefused as exc:
        raise ChainError(Code.BAD_REQUEST, f"body refused: {_reason(exc)}") from None


async def read_body(request: web.Request, rule: BodyRule) -> dict[str, Any]:
    """The decoded body (a map), from JSON or CBOR within `rule`; anything else is a 4xx."""
    kind = request.content_type
    if kind != CBOR and not is_json(kind):
        raise ChainError(
            Code.UNSUPPORTED_MEDIA_TYPE,
            f"send application/json or {CBOR}, not {untrusted.shown(kind)}",
        )
    length = request.content_length
    if length is not None and length > rule.max_bytes:
        raise _too_large(rule)
    raw = await request.read()
    if len(raw) > rule.max_bytes:
        raise _too_large(rule)
    value = decode_body(raw, kind == CBOR, rule.limits)
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
    retry = exc.extra.get("retry_after")
    headers = {"Retry-After": str(retry)} if isinstance(retry, int) else None
    return web.json_response(exc.body(), status=exc.http_status, headers=headers)
