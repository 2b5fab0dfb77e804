"""The local HTTP API for POS software.

    POST /v1/invoices          issue an invoice        (device ISSUE)
    POST /v1/credit-notes      issue a credit note     (device CREDIT)
    POST /v1/reports/x         X report                (device X_REPORT)
    POST /v1/reports/z         Z report, day close     (device Z_REPORT)
    GET  /v1/documents/{counter}?device=…     reprint by counter
    GET  /v1/invoices/{code}/{number}?device=…   reprint by code and number
    GET  /v1/status            devices, backlog, chain
    GET  /metrics              Prometheus text
    GET  /v1/health            200 while the daemon runs

Bodies are JSON, and every write says so (`Content-Type: application/json`);
who may call at all (Origin, Host, the optional bearer token) is
`syncd/access.py`. The issuing routes take the device CLI's request (for an
invoice `{"buyer"?, "items": [...]}`) plus an optional `"device"`: a
device name, port or id, needed only when several printers are attached
(otherwise the first one online is used).

Each issuing request carries an `Idempotency-Key` header (one is made up
and returned when missing). The key is bound to one device request id
before anything is sent, so a retry with the same key returns the same
document. A refusal by the device (nothing issued) releases the key, so
that the retry after, say, loading paper is a new attempt.

A credit note's body may carry the buyer's red-letter `"confirmation"`
(passed to the printer, which signs it in). Without one, syncd first asks
the chain whether the original is claimed and refuses the credit note
(409 CREDIT_NEEDS_CONFIRMATION) before the printer signs it: a signed credit
note the chain rejects would hold back the printer's later documents.

Errors: `{"error": CODE, "message": sentence for the cashier, "detail"?}`
with 4xx/409/503 as set out in `refusals.py`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from device.client import LinkError
from device.protocol import untrusted
from device.protocol.commands import Command
from device.protocol.document import DocumentError, parse_document
from device.protocol.invoice import is_invoice_code, is_invoice_number
from device.protocol.status import DeviceError, Status
from syncd import refusals
from syncd.access import Access
from syncd.attachment import Attachment
from syncd.chainport import ChainDown, ChainRefused
from syncd.idempotency import (
    BadKey,
    Claim,
    ClaimRequest,
    IdempotencyStore,
    KeyReused,
    check_key,
    new_key,
)
from syncd.link import DeviceLink, LinkDown
from syncd.metrics import CONTENT_TYPE, SyncdMetrics
from syncd.receipt import DEFAULT_PAPER, document_json
from syncd.refusals import ApiCode
from syncd.rollback import RollbackGuard

log = logging.getLogger("taxctl.syncd.api")

IDEMPOTENCY_HEADER = "Idempotency-Key"
ISSUING_ROUTES = {
    "invoices": Command.ISSUE,
    "credit-notes": Command.CREDIT,
    "reports/x": Command.X_REPORT,
    "reports/z": Command.Z_REPORT,
}
COUNTER = re.compile(r"[0-9]{1,19}")  # ASCII digits: str.isdigit() also takes "²" and "٣"
MAX_COUNTER = 2**62  # the device's own bound for a counter
# What CBOR carries without a bignum tag; the device refuses tags, and a stored request
# body must decode again for a retry.
INT_RANGE = range(-(2**64), 2**64)
CREDIT_CHECK_SECONDS = 5.0  # the longest a credit note waits for the chain's claimed answer


class ApiError(Exception):
    def __init__(
        self,
        code: str,
        refusal: refusals.Refusal,
        detail: str = "",
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        self.code = code
        self.refusal = refusal
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra
        self.hang_up = False  # close the connection once the answer is out
        super().__init__(f"{code}: {refusal.message} {detail}".strip())

    @classmethod
    def of(
        cls, code: ApiCode, detail: str = "", headers: dict[str, str] | None = None, **extra: Any
    ) -> ApiError:
        return cls(code.value, refusals.for_code(code), detail, headers, **extra)

    @classmethod
    def device(
        cls, exc: DeviceError, headers: dict[str, str] | None = None, **extra: Any
    ) -> ApiError:
        return cls(exc.status.name, refusals.for_status(exc.status), exc.detail, headers, **extra)

    def response(self) -> web.Response:
        body: dict[str, Any] = {"error": self.code, "message": self.refusal.message}
        if self.detail:
            body["detail"] = self.detail
        body.update(self.extra)
        out_headers = dict(self.headers)
        if self.refusal.retry_after is not None:
            out_headers["Retry-After"] = str(self.refusal.retry_after)
        return web.json_response(body, status=self.refusal.http, headers=out_headers, dumps=_dumps)


# json.dumps with ensure_ascii=False builds an encoder for every call: one, kept, gives
# the same text (the same options) for a little less.
_ENCODER = json.JSONEncoder(ensure_ascii=False)


def _dumps(value: Any) -> str:
    return _ENCODER.encode(value)


@dataclass
class ApiContext:
    devices: Sequence[Attachment]
    store: IdempotencyStore
    metrics: SyncdMetrics
    status: Callable[[], dict[str, Any]]
    max_body: int = 1 << 20
    body_timeout: float = 30.0
    stopping: bool = False
    # called when a request's head has been read (True) and when its handler is done
    on_request: Callable[[web.Request, bool], None] | None = None
    access: Access = field(default_factory=Access)
    # the chain's answer to "has a buyer claimed this invoice?" (ChainGateway.invoice_claimed);
    # None: no chain to ask (tests of the API alone)
    invoice_claimed: Callable[[str, str, str, str], Awaitable[bool | None]] | None = None
    guard: RollbackGuard | None = None  # refuses printers that went backwards or equivocated


class PosApi:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.ctx.max_body, middlewares=[self._errors, self._access]
        )
        for route in ISSUING_ROUTES:
            app.router.add_post(f"/v1/{route}", self._issuing(route))
        app.router.add_get("/v1/documents/{counter}", self.reprint)
        app.router.add_get("/v1/invoices/{code}/{number}", self.reprint)
        app.router.add_get("/v1/status", self.status)
        app.router.add_get("/v1/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        return app

    # --- plumbing --------------------------------------------------------------------------

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        if self.ctx.on_request is not None:
            self.ctx.on_request(request, True)
        try:
            response = await handler(request)
        except ApiError as exc:
            response = exc.response()
            log.info(
                "%s %s -> %d %s",
                request.method,
                untrusted.shown(request.path),
                response.status,
                exc,
            )
            if exc.hang_up:
                await _answer_and_hang_up(request, response)
        except web.HTTPRequestEntityTooLarge:
            error = ApiError.of(ApiCode.BODY_TOO_LARGE, f"limit {self.ctx.max_body} bytes")
            response = error.response()
        except web.HTTPException as exc:
            response = _router_refusal(request, exc).response()
        except Exception:
            log.exception("%s %s failed", request.method, untrusted.shown(request.path))
            response = ApiError.of(ApiCode.INTERNAL_ERROR).response()
        finally:
            if self.ctx.on_request is not None:
                self.ctx.on_request(request, False)
        self.ctx.metrics.pos_requests.inc(1, route, str(response.status))
        return response

    @web.middleware
    async def _access(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Before any body is read or anything sent to a printer (inside `_errors`, so a
        refusal is answered and counted like any other)."""
        access = self.ctx.access
        refused = access.refusal(request)
        if refused is not None:
            code, detail = refused
            headers = {"WWW-Authenticate": "Bearer"} if code == ApiCode.UNAUTHORIZED else None
            raise ApiError.of(code, detail, headers)
        preflight = access.preflight(request)
        if preflight is not None:
            return preflight
        try:
            response = await handler(request)
        except ApiError as exc:
            exc.headers.update(access.cors_headers(request))
            raise
        response.headers.update(access.cors_headers(request))
        return response

    async def _json(self, request: web.Request, *, optional: bool = False) -> dict[str, Any]:
        """The one place a POS body is read and decoded: bounded in time, size and shape."""
        try:
            async with asyncio.timeout(self.ctx.body_timeout):
                raw = await request.read()
        except TimeoutError:
            # A client trickling its body holds a connection slot: answer and hang up.
            error = ApiError.of(
                ApiCode.REQUEST_TIMEOUT, f"the body took longer than {self.ctx.body_timeout:g} s"
            )
            error.hang_up = True
            raise error from None
        if not raw.strip():
            if optional:
                return {}
            raise ApiError.of(ApiCode.BAD_REQUEST, "the body is empty; send a JSON object")
        try:
            body = untrusted.loads_json(raw)
        except untrusted.InputRefused as exc:
            raise ApiError.of(ApiCode.BAD_JSON, str(exc)) from None
        if not isinstance(body, dict):
            raise ApiError.of(ApiCode.BAD_REQUEST, "the body must be a JSON object")
        _check_integers(body)
        return body

    def _device(self, selector: Any, *, prefer_id: str | None = None) -> Attachment:
        devices = self.ctx.devices
        links = [d.link for d in devices]
        if prefer_id is not None:
            for device in devices:
                if device.link.device_id == prefer_id:
                    return device
            raise ApiError.of(ApiCode.DEVICE_OFFLINE, f"device {prefer_id} is not attached now")
        if selector is not None:
            if not isinstance(selector, str) or not selector:
                raise ApiError.of(ApiCode.BAD_REQUEST, '"device" is a device name, port or id')
            for device in devices:
                if device.selected_by(selector):
                    return device
            unidentified = [link.name for link in links if link.device_id is None]
            if unidentified:
                # It may be the printer on a port not yet answering (syncd just started,
                # cable out): a till should try again, not be told the printer is unknown.
                raise ApiError.of(
                    ApiCode.DEVICE_OFFLINE,
                    f"{untrusted.shown(selector)} is not attached now; not yet identified: "
                    + ", ".join(unidentified),
                )
            known = ", ".join(link.device_id or link.name for link in links)
            raise ApiError.of(
                ApiCode.UNKNOWN_DEVICE, f"{untrusted.shown(selector)}; attached: {known}"
            )
        if not devices:
            raise ApiError.of(ApiCode.NO_DEVICE)
        for device in devices:
            if device.link.online:
                return device
        return devices[0]

    @staticmethod
    def _client(link: DeviceLink) -> Any:
        try:
            return link.require()
        except LinkDown as exc:
            raise ApiError.of(ApiCode.DEVICE_OFFLINE, str(exc)) from None

    def _document(self, link: DeviceLink, response: dict[str, Any], paper: int) -> dict[str, Any]:
        try:
            document = parse_document(response["document"])
        except (DocumentError, KeyError, TypeError) as exc:
            raise ApiError.of(
                ApiCode.INTERNAL_ERROR, f"the device sent a bad document: {exc}"
            ) from None
        public_key = link.info.public_key if link.info is not None else None
        if public_key is None or not document.verify(public_key):
            raise ApiError.of(
                ApiCode.INTERNAL_ERROR,
                "the document's signature does not verify with the device's key",
            )
        return document_json(document, response, paper, public_key)

    def _check_not_rolled_back(self, link: DeviceLink, headers: dict[str, str]) -> None:
        guard = self.ctx.guard
        if guard is None:
            return
        guard.check_link(link)
        refused = guard.refusal(link.device_id)
        if refused is not None:
            code, why = refused
            raise ApiError.of(code, why, headers, device_id=link.device_id)

    def _issued(self, link: DeviceLink, response: dict[str, Any], paper: int) -> dict[str, Any]:
        """The answer for a document the printer has signed: never an error. If syncd cannot
        check or render it, the POS still gets 201 with what the printer sent and a warning,
        so that it never issues the sale a second time with a new key."""
        try:
            return self._document(link, response, paper)
        except ApiError as exc:
            reason = exc.detail or exc.refusal.message
        except Exception as exc:  # a rendering bug must not turn an issued invoice into a 500
            log.exception("rendering an issued document failed")
            reason = f"rendering failed ({type(exc).__name__})"
        log.error("%s: issued document kept unchecked: %s", link.label, reason)
        return unchecked_document(link, response, reason)

    @staticmethod
    def _paper(request: web.Request) -> int:
        paper = request.query.get("paper", str(DEFAULT_PAPER))
        if paper not in ("58", "80"):
            raise ApiError.of(ApiCode.BAD_REQUEST, "paper is 58 or 80 (mm)")
        return int(paper)

    # --- issuing ---------------------------------------------------------------------------

    def _issuing(self, route: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            return await self.issue(request, route)

        return handler

    async def issue(self, request: web.Request, route: str) -> web.Response:
        if self.ctx.stopping:
            raise ApiError.of(ApiCode.SHUTTING_DOWN)
        command = ISSUING_ROUTES[route]
        paper = self._paper(request)
        header = request.headers.get(IDEMPOTENCY_HEADER)
        key = _idempotency_key(header)
        key_headers = {IDEMPOTENCY_HEADER: key}
        body = await self._json(request, optional=command not in (Command.ISSUE, Command.CREDIT))
        if command not in (Command.ISSUE, Command.CREDIT) and set(body) - {"device"}:
            raise ApiError.of(ApiCode.BAD_REQUEST, 'a report takes no fields but "device"')
        selector = body.pop("device", None)
        # Only a credit note looks its key up first: a retry must not be checked again
        # against the chain. Any other sale claims at once; the claim itself says when the
        # key was stored before, and for which printer.
        earlier = None
        if header and command == Command.CREDIT:
            earlier = await asyncio.to_thread(self.ctx.store.find, key)
        if earlier is not None and selector is None:
            device = self._device(None, prefer_id=earlier.device_id)
        else:
            device = self._device(selector)
        link, client = self._ready(device, key_headers)
        if command == Command.CREDIT and earlier is None:
            await self._check_credit(link, client, body)
        asked = ClaimRequest(
            key,
            route,
            link.device_id or "?",
            int(command),
            body,
            client.new_request_id(),
            selector is not None,
        )
        claim = await self._claim(asked)
        if claim.device_id != asked.device_id:
            # A retry of a sale first sent, with no printer named, to another printer: it
            # goes to that one again, under the request id stored with the key.
            device = self._device(None, prefer_id=claim.device_id)
            link, client = self._ready(device, key_headers)
        device_id = claim.device_id
        response = await self._send(client, claim, key_headers, device_id)
        result = self._issued(link, response, paper)
        self._note_issued(device, claim, result)
        # 201 for a document issued now, 200 for the same document given again
        status = 201 if claim.fresh else 200
        return web.json_response(result, status=status, headers=key_headers, dumps=_dumps)

    def _note_issued(self, device: Attachment, claim: Claim, result: dict[str, Any]) -> None:
        """What follows a signed document: the key's counter note, the rollback guard, a
        sync round, and the answer's key and retry fields."""
        if type(result.get("counter")) is int:
            self.ctx.store.group.complete(claim.key, result["counter"])  # with the next batch
            if self.ctx.guard is not None:
                self.ctx.guard.observe(device.link.device_id, result["counter"], None)
        device.wake()
        result["idempotency_key"] = claim.key
        result["retry"] = not claim.fresh
        log.info(
            "%s %s %s/%s counter %d total %d%s",
            claim.device_id,
            result["kind"],
            result["code"],
            result["number"],
            result["counter"],
            result["total"],
            " (retry of an earlier request)" if not claim.fresh else "",
        )

    def _ready(self, device: Attachment, key_headers: dict[str, str]) -> tuple[DeviceLink, Any]:
        """The printer's link and client, if it is attached and not rolled back."""
        link = device.link
        client = self._client(link)
        self._check_not_rolled_back(link, key_headers)
        return link, client

    async def _claim(self, asked: ClaimRequest) -> Claim:
        try:
            return await self.ctx.store.group.claim(asked)  # with others in flight: one fsync
        except KeyReused as exc:
            raise ApiError.of(ApiCode.IDEMPOTENCY_KEY_REUSED, exc.reason) from None

    async def _send(
        self, client: Any, claim: Claim, key_headers: dict[str, str], device_id: str
    ) -> dict[str, Any]:
        """The claimed request to the printer, under the claim's request id."""
        try:
            response: dict[str, Any] = await client.request(
                Command(claim.command), claim.body, request_id=claim.request_id
            )
        except DeviceError as exc:
            # Refused: nothing was issued. Free the key so a retry is a new attempt (the
            # device would otherwise replay this refusal for the same request id).
            await asyncio.to_thread(self.ctx.store.release, claim.key, claim.request_id)
            raise ApiError.device(exc, key_headers, device_id=device_id) from None
        except LinkError as exc:
            # Outcome unknown: keep the key, so the retry re-sends the same request id.
            raise ApiError.of(
                ApiCode.OUTCOME_UNKNOWN,
                str(exc),
                key_headers,
                device_id=device_id,
                idempotency_key=claim.key,
            ) from None
        return response

    async def _check_credit(self, link: DeviceLink, client: Any, body: dict[str, Any]) -> None:
        """Refuse up front a credit note the chain would reject for want of the buyer's
        confirmation: once the printer signs it, a rejected credit note holds back every
        later document of the printer (the chain takes them in counter order)."""
        ref, check = body.get("refers_to"), self.ctx.invoice_claimed
        if check is None or body.get("confirmation") is not None or not isinstance(ref, dict):
            return  # with a confirmation the chain checks it; a bad body the printer refuses
        code, number = ref.get("code"), ref.get("number")
        if not (is_invoice_code(code) and is_invoice_number(number)):
            return
        try:
            original = parse_document(
                (await client.get_document(code=code, number=number))["document"]
            )
        except (DeviceError, DocumentError, KeyError, TypeError):
            return  # not this printer's invoice: the printer refuses the credit note itself
        except LinkError as exc:
            raise ApiError.of(ApiCode.DEVICE_OFFLINE, str(exc)) from None
        issued = str(original.payload["issued_at"])
        try:
            # bounded: a till waits for this answer; a chain that hangs counts as away
            async with asyncio.timeout(CREDIT_CHECK_SECONDS):
                claimed = await check(str(code), str(number), issued[:10], original.check_code)
        except (ChainDown, ChainRefused, TimeoutError) as exc:
            if original.counter > link.synced_through:
                return  # not uploaded yet, so no buyer can have claimed it
            why = str(exc) or f"no answer within {CREDIT_CHECK_SECONDS:g} s"
            raise ApiError.of(ApiCode.CREDIT_CHECK_UNAVAILABLE, why) from None
        if claimed:
            raise ApiError.of(
                ApiCode.CREDIT_NEEDS_CONFIRMATION,
                f"{code}/{number} is claimed: the buyer confirms the credit on the chain and"
                ' the credit note carries its "confirmation"',
            )

    # --- reading ---------------------------------------------------------------------------

    async def reprint(self, request: web.Request) -> web.Response:
        paper = self._paper(request)
        link = self._device(request.query.get("device")).link
        client = self._client(link)
        selector = _reprint_selector(request.match_info)
        try:
            response = await client.get_document(**selector)
        except DeviceError as exc:
            if exc.status in (Status.RANGE_INVALID, Status.BAD_REQUEST):
                raise ApiError.of(ApiCode.NOT_FOUND, exc.detail) from None
            raise ApiError.device(exc) from None
        except LinkError as exc:
            raise ApiError.of(ApiCode.DEVICE_OFFLINE, str(exc)) from None
        return web.json_response(self._document(link, response, paper), dumps=_dumps)

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self.ctx.status(), dumps=_dumps)

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "stopping": self.ctx.stopping})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=self.ctx.metrics.render(), headers={"Content-Type": CONTENT_TYPE})


UNCHECKED = "DOCUMENT_UNCHECKED"
UNCHECKED_MESSAGE = (
    "The printer issued this document, but the invoice service could not check or render "
    "it. It IS issued: do not issue the sale again. Reprint it by its counter, and call "
    "support."
)


def _idempotency_key(header: str | None) -> str:
    """The POS's key, checked, or a new one when it sent none."""
    try:
        return check_key(header) if header is not None else new_key()
    except BadKey as exc:
        raise ApiError.of(ApiCode.BAD_IDEMPOTENCY_KEY, str(exc)) from None


def unchecked_document(link: DeviceLink, response: Any, reason: str) -> dict[str, Any]:
    """What is safe to pass on from a printer's answer that did not check out."""
    body = response if isinstance(response, dict) else {}
    out: dict[str, Any] = {"device_id": link.device_id}
    for key, kind in (
        ("counter", int),
        ("kind", str),
        ("code", str),
        ("number", str),
        ("issued_at", str),
        ("total", int),
        ("check_code", str),
        ("training", bool),
    ):
        value = body.get(key)
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        out[key] = untrusted.shown(value)[1:-1] if ok and kind is str else value if ok else None
    document = body.get("document")
    out["cose_sign1"] = base64.b64encode(document).decode() if isinstance(document, bytes) else None
    out["warning"] = {"code": UNCHECKED, "message": UNCHECKED_MESSAGE, "detail": reason}
    return out


async def _answer_and_hang_up(request: web.Request, response: web.Response) -> None:
    """Send the answer now and close: aiohttp would otherwise keep reading (lingering) a
    body that a slow client is still trickling."""
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()  # the transport flushes the answer, then closes


def _router_refusal(request: web.Request, exc: web.HTTPException) -> ApiError:
    """aiohttp's own refusals (no such route, another method) as the API's error body, with
    one of the codes of `refusals.ERROR_CODES`."""
    path = untrusted.shown(request.path)
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return ApiError.of(
            ApiCode.METHOD_NOT_ALLOWED, f"{path} takes {allowed}", {"Allow": allowed}
        )
    if isinstance(exc, web.HTTPNotFound):
        return ApiError.of(ApiCode.NOT_FOUND, f"no route {path}")
    log.warning("%s %s: %s", request.method, path, exc.reason)
    return ApiError.of(ApiCode.BAD_REQUEST, exc.reason)


def _reprint_selector(info: Any) -> dict[str, Any]:
    """A reprint's path parameters, checked before anything goes to the printer."""
    if "counter" in info:
        text = info["counter"]
        if COUNTER.fullmatch(text) is None or not 1 <= int(text) <= MAX_COUNTER:
            raise ApiError.of(
                ApiCode.BAD_REQUEST,
                f"counter is an integer from 1 to {MAX_COUNTER}, got {untrusted.shown(text)}",
            )
        return {"counter": int(text)}
    code, number = info["code"], info["number"]
    if not is_invoice_code(code) or not is_invoice_number(number):
        raise ApiError.of(
            ApiCode.BAD_REQUEST,
            f"an invoice is named by a 12-digit code and an 8-digit number, got "
            f"{untrusted.shown(code)}/{untrusted.shown(number)}",
        )
    return {"code": code, "number": number}


def _check_integers(body: dict[str, Any]) -> None:
    """Refuse an integer the device's CBOR cannot carry (it would need a bignum tag)."""
    stack: list[Any] = [body]
    while stack:
        item = stack.pop()
        if type(item) is int and item not in INT_RANGE:
            raise ApiError.of(
                ApiCode.BAD_REQUEST, f"a number out of range: {untrusted.shown(item)}"
            )
        if type(item) is dict:
            stack.extend(item.values())
        elif type(item) is list:
            stack.extend(item)
