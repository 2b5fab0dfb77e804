"""Who may call the POS API: origin, host, bearer token and content type.

The API issues invoices from whatever reaches its port, so a web page open
on the shop PC must not be able to reach it. A browser sends a cross-site
"simple" request (a form POST, or `fetch` with `text/plain`) without asking
first; requiring `Content-Type: application/json` on every write forces a
CORS preflight, and syncd never answers a preflight with permissive CORS
headers. A request carrying an `Origin` not listed in `api.allowed_origins`
(none by default: POS software is not a web page) is refused outright, and a
`Host` that is not an IP literal, `localhost`, this machine's hostname or an
allowed origin's host is
refused on TCP too (a DNS-rebinding page is same-origin to itself, and a GET
need carry no Origin). With `api.token_file` set, every route but `/v1/health` and
`/metrics` needs `Authorization: Bearer <token>`; those two say nothing about
any sale (liveness, and counters for a scraper that holds no till credential).
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from device.protocol import untrusted
from syncd.refusals import ApiCode

OPEN_ROUTES = frozenset({"/v1/health", "/metrics"})  # no token needed
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
JSON = "application/json"
MIN_TOKEN_CHARS = 16
MAX_TOKEN_CHARS = 512
PREFLIGHT_HEADERS = {
    "Access-Control-Allow-Methods": "GET, POST",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, Idempotency-Key",
    "Access-Control-Max-Age": "600",
}


class TokenFileError(ValueError):
    """The token file cannot be used; the message names it and why."""


def parse_origins(text: str) -> frozenset[str]:
    """`api.allowed_origins`: comma- or space-separated `scheme://host[:port]`, exactly as
    a browser sends them in `Origin` (no path, no trailing slash)."""
    out = set()
    for item in text.replace(",", " ").split():
        parts = urlsplit(item)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.path
            or parts.query
            or parts.fragment
            or parts.username is not None
            or item != f"{parts.scheme}://{parts.netloc}"
        ):
            raise ValueError(
                f"an origin is scheme://host[:port] (no path), got {untrusted.shown(item)}"
            )
        out.add(item)
    return frozenset(out)


def read_token(path: Path) -> str:
    """The bearer token from `api.token_file`: one line, kept from other users."""
    try:
        info = path.stat()
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenFileError(f"api.token_file {path}: cannot read it ({exc})") from None
    if stat.S_IMODE(info.st_mode) & 0o007:
        raise TokenFileError(
            f"api.token_file {path}: other users can read it; chmod 0640 (or 0600) it"
        )
    if not MIN_TOKEN_CHARS <= len(text) <= MAX_TOKEN_CHARS or not text.isascii():
        raise TokenFileError(
            f"api.token_file {path}: the token must be {MIN_TOKEN_CHARS} to"
            f" {MAX_TOKEN_CHARS} ASCII characters (e.g. `openssl rand -hex 32`)"
        )
    if any(c.isspace() or not c.isprintable() for c in text):
        raise TokenFileError(f"api.token_file {path}: the token is one word of printable ASCII")
    return text


@dataclass(frozen=True)
class Access:
    allowed_origins: frozenset[str] = frozenset()
    token: str | None = None

    def refusal(self, request: web.Request) -> tuple[ApiCode, str] | None:
        """Why this request may not go on (nothing done yet), or None."""
        origin = request.headers.get("Origin")
        if origin is not None and origin not in self.allowed_origins:
            return (
                ApiCode.ORIGIN_REFUSED,
                f"Origin {untrusted.shown(origin)} is not in api.allowed_origins",
            )
        if _over_tcp(request) and not self._host_allowed(request.headers.get("Host")):
            return (
                ApiCode.HOST_REFUSED,
                f"Host {untrusted.shown(request.headers.get('Host'))} is not this machine",
            )
        if request.method == "OPTIONS":
            return None  # a preflight carries no credentials; it grants nothing by itself
        if (
            self.token is not None
            and request.path not in OPEN_ROUTES
            and not self._bearer_ok(request.headers.get("Authorization", ""))
        ):
            return ApiCode.UNAUTHORIZED, "send Authorization: Bearer <api.token_file's token>"
        if request.method not in SAFE_METHODS and request.content_type != JSON:
            return (
                ApiCode.UNSUPPORTED_MEDIA_TYPE,
                f"a write needs Content-Type: {JSON}, got"
                f" {untrusted.shown(request.headers.get('Content-Type', 'none'))}",
            )
        return None

    def _bearer_ok(self, header: str) -> bool:
        assert self.token is not None
        scheme, _, given = header.partition(" ")
        # compare_digest: the time taken does not tell how much of a guess was right
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode("utf-8", "surrogateescape"), self.token.encode()
        )

    def _host_allowed(self, host: str | None) -> bool:
        if host is None:  # HTTP/1.0 without Host: no browser sends that
            return True
        return _host_names_this_machine(host, socket.gethostname().lower(), self.allowed_origins)

    def cors_headers(self, request: web.Request) -> dict[str, str]:
        """For a request from an allowed origin: that origin, never `*`."""
        origin = request.headers.get("Origin")
        if origin is None or origin not in self.allowed_origins:
            return {}
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Expose-Headers": "Idempotency-Key",
            "Vary": "Origin",
        }

    def preflight(self, request: web.Request) -> web.Response | None:
        """The answer to a CORS preflight from an allowed origin; None for any other
        OPTIONS (it gets the usual 405, with no CORS header)."""
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
            return None
        headers = self.cors_headers(request)
        if not headers:
            return None
        return web.Response(status=204, headers={**headers, **PREFLIGHT_HEADERS})


# Every request asks about the same few Host values: parsing each costs more than its
# answer. Bounded, so that a client sending a new Host each time only evicts entries.
@functools.lru_cache(maxsize=256)
def _host_names_this_machine(host: str, this: str, allowed_origins: frozenset[str]) -> bool:
    try:
        name = urlsplit(f"//{host}").hostname if host else None
    except ValueError:  # "[::1", "[zz]": not a host name, whatever it names
        return False
    if not name:
        return False
    if name in ("localhost", this, f"{this}.local"):
        return True
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    return any(urlsplit(o).hostname == name for o in allowed_origins)


def _over_tcp(request: web.Request) -> bool:
    """A browser reaches only TCP: on the Unix socket any Host is the till's own business."""
    transport = request.transport
    return transport is None or isinstance(transport.get_extra_info("sockname"), tuple)


def load_access(origins: str, token_file: str) -> Access:
    """The policy from the two options (`ValueError`/`TokenFileError` if unusable)."""
    token = read_token(Path(os.path.expanduser(token_file))) if token_file else None
    return Access(parse_origins(origins), token)
