"""A Python client for syncd's POS API (docs/pos-openapi.yaml), with its rules built in.

    with PosClient("http://127.0.0.1:8631", token=...) as pos:
        invoice = pos.issue_invoice({"items": [...]})
        again = pos.reprint(counter=invoice.counter)

    async with AsyncPosClient("unix:/run/taxctl-syncd/api.sock") as pos:
        note = await pos.issue_credit_note({"refers_to": {...}, "reason": "returned"})

What the contract asks of a POS is done here, once:

- every issuing request carries an `Idempotency-Key`, made up per call unless given, and
  the same key is sent with every retry of that call, so a retry never issues twice;
- a request is sent again (same key) when no answer came at all or the answer's code is
  one of `refusals.RETRY_SAME_KEY`, after the answer's `Retry-After` (or a short backoff),
  for at most `RetryPolicy.attempts` tries and `RetryPolicy.total` seconds;
- any other refusal, or retries running out, raises `PosError` with the API's `code`,
  HTTP `status`, the cashier's `message` and the `idempotency_key` to use when the sale is
  tried again later (it may have been issued: `code == "OUTCOME_UNKNOWN"`);
- answers are decoded under the project's bounds for untrusted input and returned typed.

`PosClient` uses the standard library (http.client) and keeps one connection open;
`AsyncPosClient` uses aiohttp. Both speak TCP (`http://HOST:PORT`) or the Unix socket
(`unix:/path/to/api.sock`), with the bearer token of `api.token_file` when given.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import http.client
import json
import os
import re
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp

from device.errors import TaxctlError
from device.protocol import untrusted
from syncd.refusals import RETRY_SAME_KEY, ApiCode

__all__ = [
    "AsyncPosClient",
    "Call",
    "Document",
    "Health",
    "PosClient",
    "PosError",
    "RetryPolicy",
    "Status",
    "issuing_call",
]

IDEMPOTENCY_HEADER = "Idempotency-Key"
DEFAULT_URL = "http://127.0.0.1:8631"
MAX_ANSWER_BYTES = 16 * 1024 * 1024  # a document with its receipt is a few kilobytes
ANSWER = untrusted.JSON_BODY.allowing(floats=True)  # /v1/status has seconds as fractions
# The request body as json.dumps(..., ensure_ascii=False) writes it, without a new encoder
# per call (json.dumps makes one whenever an option differs from its defaults).
_ENCODER = json.JSONEncoder(ensure_ascii=False)
NO_ANSWER = ApiCode.OUTCOME_UNKNOWN.value  # nothing came back: the sale may be issued


class PosError(TaxctlError):
    """A refusal of the POS API, or no answer within the retries.

    `code` is the API's `error` (docs/pos-openapi.yaml ErrorCode; OUTCOME_UNKNOWN with
    `status` 0 when no answer came at all), `message` the sentence for the cashier."""

    def __init__(
        self,
        code: str,
        status: int,
        message: str,
        *,
        detail: str = "",
        retry_after: float | None = None,
        idempotency_key: str | None = None,
        device_id: str | None = None,
    ) -> None:
        self.code = code
        self.status = status
        self.message = message
        self.detail = detail
        self.retry_after = retry_after
        self.idempotency_key = idempotency_key
        self.device_id = device_id
        super().__init__(f"{code} ({status or 'no answer'}): {message} {detail}".strip())

    @property
    def retryable(self) -> bool:
        """Whether sending the same request again with the same key is what the API asks."""
        return self.status == 0 or self.code in RETRY_SAME_KEY

    @property
    def maybe_issued(self) -> bool:
        """True when the document may exist: retry with `idempotency_key`, never a new one."""
        return self.code == NO_ANSWER


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # tries of one call, the first included
    total: float = 30.0  # seconds from the first try after which no retry starts
    backoff: float = 0.2  # first pause after no answer (doubles, at most max_pause)
    max_pause: float = 5.0  # longest pause, whatever Retry-After says

    def pause(self, error: PosError, attempt: int) -> float:
        if error.retry_after is not None:
            return min(max(error.retry_after, 0.0), self.max_pause)
        return min(self.backoff * 2 ** (attempt - 1), self.max_pause)


NO_RETRY = RetryPolicy(attempts=1)


@dataclass(frozen=True)
class Document:
    """A signed document as syncd returns it (docs/pos-openapi.yaml Document, IssuedAnswer).

    For an issued document that syncd could not check, `warning` is set and the fields it
    could not read are None: the sale IS issued; reprint it by `counter` later."""

    device_id: str | None
    counter: int | None
    kind: str | None
    code: str | None
    number: str | None
    issued_at: str | None
    total: int | None
    check_code: str | None
    training: bool | None
    cose_sign1: bytes | None
    payload: dict[str, Any] | None  # the signed payload ("document")
    receipt_text: str | None
    qr: str | None
    offline: bool | None = None
    synced: bool | None = None
    idempotency_key: str | None = None  # issuing answers
    retry: bool = False  # True: the document of an earlier request with this key
    warning: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Document:
        receipt: Mapping[str, Any] = _opt(body, "receipt", dict) or {}
        return cls(
            device_id=_opt(body, "device_id", str),
            counter=_opt(body, "counter", int),
            kind=_opt(body, "kind", str),
            code=_opt(body, "code", str),
            number=_opt(body, "number", str),
            issued_at=_opt(body, "issued_at", str),
            total=_opt(body, "total", int),
            check_code=_opt(body, "check_code", str),
            training=_opt(body, "training", bool),
            cose_sign1=_base64(body.get("cose_sign1")),
            payload=_opt(body, "document", dict),
            receipt_text=_opt(receipt, "text", str),
            qr=_opt(receipt, "qr", str),
            offline=_opt(body, "offline", bool),
            synced=_opt(body, "synced", bool),
            idempotency_key=_opt(body, "idempotency_key", str),
            retry=body.get("retry") is True,
            warning=_opt(body, "warning", dict),
        )


@dataclass(frozen=True)
class Health:
    ok: bool
    stopping: bool


@dataclass(frozen=True)
class Status:
    """`GET /v1/status`: the parts a till looks at, and the whole answer in `raw`."""

    devices: list[dict[str, Any]]
    pending: int
    rejected: int
    chain_state: str
    raw: dict[str, Any]

    @property
    def can_issue(self) -> bool:
        return any(d.get("can_issue") is True for d in self.devices)


def _base64(value: Any) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:  # binascii.Error: not what syncd sends; the other fields still count
        return None


def _opt(body: Mapping[str, Any], key: str, kind: type) -> Any:
    value = body.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        return None
    return value


# --- requests and answers, the same for both clients --------------------------------------


@dataclass(frozen=True)
class Call:
    method: str
    path: str  # with its query
    body: bytes | None
    key: str | None  # the Idempotency-Key of an issuing call

    def headers(self, token: str | None) -> dict[str, str]:
        out = {"Accept": "application/json"}
        if self.method == "POST":
            out["Content-Type"] = "application/json"  # syncd refuses a write without it
        if self.key is not None:
            out[IDEMPOTENCY_HEADER] = self.key
        if token:
            out["Authorization"] = f"Bearer {token}"
        return out


def request_body(request: Any) -> dict[str, Any]:
    """A request as the JSON object the API takes: a mapping, a typed request of the printer
    API (`InvoiceRequest`, `CreditRequest`: the POS body is the device's body), a dataclass
    of one, or an object with `to_json()`."""
    if isinstance(request, Mapping):
        return dict(request)
    to_body = getattr(request, "to_body", None)
    if callable(to_body):
        body = to_body()
        if isinstance(body, Mapping):
            return dict(body)
    if dataclasses.is_dataclass(request) and not isinstance(request, type):
        return {k: v for k, v in dataclasses.asdict(request).items() if v is not None}
    to_json = getattr(request, "to_json", None)
    if callable(to_json):
        body = to_json()
        if isinstance(body, Mapping):
            return dict(body)
    raise TypeError(f"a request is a mapping or a typed request, not {type(request).__name__}")


ISSUING_ROUTES = ("invoices", "credit-notes", "reports/x", "reports/z")


def issuing_call(
    route: str,
    request: Any,
    *,
    device: str | None,
    paper: int | None,
    key: str | None,
) -> Call:
    if route not in ISSUING_ROUTES:
        raise ValueError(f"an issuing route is one of {', '.join(ISSUING_ROUTES)}")
    content = request_body(request) if request is not None else {}
    if device is not None:
        content["device"] = device
    query = f"?{urlencode({'paper': paper})}" if paper is not None else ""
    data = _ENCODER.encode(content).encode()
    return Call("POST", f"/v1/{route}{query}", data, key or _new_key())


def _new_key() -> str:
    """`uuid.uuid4().hex`, without building a UUID object: 16 random bytes with the version
    (4) and variant (RFC 4122) bits set as uuid4 sets them."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40
    raw[8] = raw[8] & 0x3F | 0x80
    return raw.hex()


def reprint_call(
    counter: int | None, code: str | None, number: str | None, device: str | None, paper: int | None
) -> Call:
    if (counter is None) == (code is None or number is None):
        raise ValueError("reprint by counter, or by code and number")
    path = (
        f"/v1/documents/{int(counter)}"
        if counter is not None
        else f"/v1/invoices/{quote(str(code), safe='')}/{quote(str(number), safe='')}"
    )
    params = {k: v for k, v in (("device", device), ("paper", paper)) if v is not None}
    return Call("GET", path + (f"?{urlencode(params)}" if params else ""), None, None)


def answer(call: Call, status: int, headers: Any, raw: bytes) -> dict[str, Any] | PosError:
    """The decoded JSON of a 2xx answer; a PosError for anything else."""
    value: Any = None
    if len(raw) <= MAX_ANSWER_BYTES:
        try:
            value = loads_answer(raw)
        except untrusted.InputRefused:
            value = None
    if status in (200, 201) and isinstance(value, dict):
        return value
    body = value if isinstance(value, dict) else {}
    code = body.get("error") if isinstance(body.get("error"), str) else None
    if code is None:  # not the API's error body: a proxy, or not syncd at all
        code = ApiCode.INTERNAL_ERROR.value if status >= 500 else ApiCode.BAD_REQUEST.value
    return PosError(
        untrusted.shown(code, 64)[1:-1],
        status,
        str(body.get("message") or f"HTTP {status} without the API's error body"),
        detail=str(body.get("detail", "")),
        retry_after=_retry_after(headers.get("Retry-After")),
        idempotency_key=call.key,
        device_id=_opt(body, "device_id", str),
    )


# A \u escape of a UTF-16 surrogate: the only way a string of strict UTF-8 JSON can hold one.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
# Below this many bytes an answer cannot hold more items than ANSWER allows: every item
# but the first follows one of , : [ { (untrusted.json_items_bound).
_FEW_ITEMS = ANSWER.max_items


def _no_constant(name: str) -> Any:
    raise ValueError("NaN and Infinity are not JSON")  # loads_json says so, on the way back


_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def loads_answer(raw: bytes) -> Any:
    """`untrusted.loads_json(raw, ANSWER)`, the same value or the same refusal, in less time.

    loads_json walks the decoded value once per item; for an answer shorter than
    ANSWER.max_items bytes the bytes prove most of what that walk checks:

    - items: fewer bytes than ANSWER.max_items, so fewer separators, so fewer items;
    - lone surrogates: strict UTF-8 (which refuses encoded surrogates) and no escape of one;
    - floats: ANSWER allows them; NaN and Infinity are refused by the parse, as there;

    and the depth by the count of `{` and `[` or else a walk of the containers alone.
    Anything else, and anything refused here, goes through loads_json, which says why."""
    if (
        len(raw) < _FEW_ITEMS
        and ANSWER.floats
        and (b"\\u" not in raw or _SURROGATE_ESCAPE.search(raw) is None)
    ):
        try:
            value = _DECODER.decode(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError):  # InputRefused: ValueError
            pass
        else:
            # No more `{` and `[` bytes than the depth allowed: no deeper nesting either.
            brackets = raw.count(b"{") + raw.count(b"[")
            if brackets <= ANSWER.max_depth or _nested_within(value, ANSWER.max_depth):
                return value
    return untrusted.loads_json(raw, ANSWER)


def _nested_within(value: Any, max_depth: int) -> bool:
    """Whether no list or dict of `value` sits at depth `max_depth` or more (the top is at 0),
    as untrusted.check_value counts; level by level, looking at containers only."""
    level = [value] if type(value) is dict or type(value) is list else []
    depth = 0
    while level:
        if depth >= max_depth:
            return False
        below: list[Any] = []
        for item in level:
            children = item.values() if type(item) is dict else item
            below += [c for c in children if type(c) is dict or type(c) is list]
        level = below
        depth += 1
    return True


def _retry_after(value: str | None) -> float | None:
    if value is None or not value.strip().isdigit():
        return None  # the API sends whole seconds; an HTTP date is not its form
    return float(value.strip())


def no_answer(call: Call, exc: BaseException) -> PosError:
    return PosError(
        NO_ANSWER,
        0,
        "No answer from the invoice service; the sale may or may not be issued: try again "
        "with the same idempotency key.",
        detail=f"{type(exc).__name__}: {untrusted.shown(str(exc))[1:-1]}",
        idempotency_key=call.key,
    )


def parse_url(url: str) -> tuple[str | None, str, int]:
    """(unix socket path or None, host, port) of `http://HOST:PORT` or `unix:/path`."""
    if url.startswith("unix:"):
        return url.removeprefix("unix:"), "localhost", 80
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(f"the POS API is http://HOST:PORT or unix:/path, got {url!r}")
    return None, parts.hostname, parts.port or 80


OnRetry = Callable[[PosError], None]


class _Tries:
    """One call's retry budget under a policy."""

    def __init__(self, policy: RetryPolicy, on_retry: OnRetry | None) -> None:
        self.policy = policy
        self.on_retry = on_retry
        self.attempt = 0
        self.deadline = time.monotonic() + policy.total

    def pause_or_raise(self, error: PosError) -> float:
        """How long to wait before the next try; raises `error` when there is none."""
        self.attempt += 1
        if not error.retryable or self.attempt >= self.policy.attempts:
            raise error
        pause = self.policy.pause(error, self.attempt)
        if time.monotonic() + pause > self.deadline:
            raise error
        if self.on_retry is not None:
            self.on_retry(error)
        return pause


# --- the synchronous client ----------------------------------------------------------------


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class PosClient:
    """syncd's POS API from synchronous code (standard library only; one connection)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        timeout: float = 15.0,
        retry: RetryPolicy = RetryPolicy(),
        on_retry: OnRetry | None = None,
    ) -> None:
        self.socket_path, self.host, self.port = parse_url(url)
        self.token = token
        self.timeout = timeout
        self.retry = retry
        self.on_retry = on_retry  # told of each refusal or silence before a retry of it
        self._conn: http.client.HTTPConnection | None = None

    def __enter__(self) -> PosClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def issue(
        self,
        route: str,
        request: Any = None,
        *,
        device: str | None = None,
        paper: int | None = None,
        idempotency_key: str | None = None,
    ) -> Document:
        """POST /v1/{route} (`invoices`, `credit-notes`, `reports/x`, `reports/z`)."""
        call = issuing_call(route, request, device=device, paper=paper, key=idempotency_key)
        return Document.from_json(self.send(call))

    def issue_invoice(self, request: Any, **options: Any) -> Document:
        return self.issue("invoices", request, **options)

    def issue_credit_note(self, request: Any, **options: Any) -> Document:
        return self.issue("credit-notes", request, **options)

    def x_report(self, **options: Any) -> Document:
        return self.issue("reports/x", None, **options)

    def z_report(self, **options: Any) -> Document:
        return self.issue("reports/z", None, **options)

    def reprint(
        self,
        counter: int | None = None,
        *,
        code: str | None = None,
        number: str | None = None,
        device: str | None = None,
        paper: int | None = None,
    ) -> Document:
        return Document.from_json(self.send(reprint_call(counter, code, number, device, paper)))

    def status(self) -> Status:
        return _status(self.send(Call("GET", "/v1/status", None, None)))

    def health(self) -> Health:
        return _health(self.send(Call("GET", "/v1/health", None, None)))

    def send(
        self, call: Call, retry: RetryPolicy | None = None, on_retry: OnRetry | None = None
    ) -> dict[str, Any]:
        """One call under the retry rules (`retry`, `on_retry` in place of the client's)."""
        tries = _Tries(retry or self.retry, on_retry or self.on_retry)
        while True:
            result = self._once(call)
            if not isinstance(result, PosError):
                return result
            time.sleep(tries.pause_or_raise(result))

    def _once(self, call: Call) -> dict[str, Any] | PosError:
        try:
            conn = self._connection()
            conn.request(call.method, call.path, body=call.body, headers=call.headers(self.token))
            resp = conn.getresponse()
            raw = resp.read(MAX_ANSWER_BYTES + 1)
            if resp.will_close or len(raw) > MAX_ANSWER_BYTES:
                self.close()
            return answer(call, resp.status, resp.headers, raw)
        except (OSError, http.client.HTTPException) as exc:
            self.close()  # the next try opens a new connection
            return no_answer(call, exc)

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.socket_path is not None:
                self._conn = _UnixConnection(self.socket_path, self.timeout)
            else:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self._conn


def _health(body: dict[str, Any]) -> Health:
    return Health(body.get("ok") is True, body.get("stopping") is True)


def _status(body: dict[str, Any]) -> Status:
    devices = [d for d in body.get("devices", []) if isinstance(d, dict)]
    chain: Mapping[str, Any] = _opt(body, "chain", dict) or {}
    return Status(
        devices,
        _opt(body, "pending", int) or 0,
        _opt(body, "rejected", int) or 0,
        str(chain.get("state", "unknown")),
        body,
    )


# --- the asynchronous client ---------------------------------------------------------------


class AsyncPosClient:
    """syncd's POS API from asyncio code (aiohttp); use `async with`."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        timeout: float = 15.0,
        retry: RetryPolicy = RetryPolicy(),
        on_retry: OnRetry | None = None,
        limit: int = 16,
    ) -> None:
        self.socket_path, host, port = parse_url(url)
        self.base = "http://localhost" if self.socket_path else f"http://{host}:{port}"
        self.token = token
        self.timeout = timeout
        self.retry = retry
        self.on_retry = on_retry
        self.limit = limit  # connections open at once
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AsyncPosClient:
        connector: aiohttp.BaseConnector = (
            aiohttp.UnixConnector(path=self.socket_path, limit=self.limit)
            if self.socket_path
            else aiohttp.TCPConnector(limit=self.limit)
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            # The API sets no cookies: a jar would only be searched and updated per request.
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def issue(
        self,
        route: str,
        request: Any = None,
        *,
        device: str | None = None,
        paper: int | None = None,
        idempotency_key: str | None = None,
    ) -> Document:
        """POST /v1/{route} (`invoices`, `credit-notes`, `reports/x`, `reports/z`)."""
        call = issuing_call(route, request, device=device, paper=paper, key=idempotency_key)
        return Document.from_json(await self.send(call))

    async def issue_invoice(self, request: Any, **options: Any) -> Document:
        return await self.issue("invoices", request, **options)

    async def issue_credit_note(self, request: Any, **options: Any) -> Document:
        return await self.issue("credit-notes", request, **options)

    async def x_report(self, **options: Any) -> Document:
        return await self.issue("reports/x", None, **options)

    async def z_report(self, **options: Any) -> Document:
        return await self.issue("reports/z", None, **options)

    async def reprint(
        self,
        counter: int | None = None,
        *,
        code: str | None = None,
        number: str | None = None,
        device: str | None = None,
        paper: int | None = None,
    ) -> Document:
        call = reprint_call(counter, code, number, device, paper)
        return Document.from_json(await self.send(call))

    async def status(self) -> Status:
        return _status(await self.send(Call("GET", "/v1/status", None, None)))

    async def health(self) -> Health:
        return _health(await self.send(Call("GET", "/v1/health", None, None)))

    async def send(
        self, call: Call, retry: RetryPolicy | None = None, on_retry: OnRetry | None = None
    ) -> dict[str, Any]:
        """One call under the retry rules (`retry`, `on_retry` in place of the client's)."""
        tries = _Tries(retry or self.retry, on_retry or self.on_retry)
        while True:
            result = await self._once(call)
            if not isinstance(result, PosError):
                return result
            await asyncio.sleep(tries.pause_or_raise(result))

    async def _once(self, call: Call) -> dict[str, Any] | PosError:
        if self._session is None:
            raise RuntimeError("use `async with AsyncPosClient(...)` before calling it")
        try:
            async with self._session.request(
                call.method, self.base + call.path, data=call.body, headers=call.headers(self.token)
            ) as resp:
                raw = await _read_body(resp.content, MAX_ANSWER_BYTES + 1)
                return answer(call, resp.status, resp.headers, raw)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return no_answer(call, exc)


async def _read_body(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The answer's body, or its first `limit` bytes when it is longer. One read gives only
    what has arrived so far: an answer in several segments needs several."""
    first = await content.read(limit)
    if not first:
        return first
    chunks = [first]
    size = len(first)
    while size < limit:
        chunk = await content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return first if len(chunks) == 1 else b"".join(chunks)
