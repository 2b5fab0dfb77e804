"""Who may call the POS API: a web page may not, a till with the token may.

A page open on the shop PC can send a cross-site "simple" POST (text/plain, no
preflight) to 127.0.0.1:8631; before, that issued an invoice or a Z report.
Every write now needs Content-Type: application/json, a foreign Origin is
refused, a preflight gets no permissive CORS answer, and with api.token_file
set every route but /v1/health and /metrics needs the bearer token. Run on
the API itself over loopback (no printer needed: each refusal comes before
anything is sent to one) and, for the end-to-end cases, on a real shop.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer

from syncd.access import Access, TokenFileError, load_access, parse_origins, read_token
from syncd.api import ApiContext, PosApi
from syncd.idempotency import IdempotencyStore
from syncd.metrics import SyncdMetrics
from tests.shop import INVOICE, Shop, http, wait_for

TOKEN = "t0ken-" + "a" * 26
ALLOWED = "https://pos.example.cn"


class Api:
    """The POS API with no printer attached: a request that gets past access control
    is answered NO_DEVICE (503), so a refusal is told apart from a pass."""

    def __init__(self, server: TestServer, store: IdempotencyStore) -> None:
        self.server, self.store = server, store

    async def call(
        self, method: str, path: str, data: bytes | None = None, **headers: str
    ) -> tuple[int, dict[str, Any], Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method, str(self.server.make_url(path)), data=data, headers=headers
            ) as resp,
        ):
            body = await resp.json(content_type=None) if resp.status != 204 else {}
            return resp.status, body, resp.headers


@pytest_asyncio.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    store = IdempotencyStore(tmp_path / "state")
    ctx = ApiContext(
        devices=[],
        store=store,
        metrics=SyncdMetrics(),
        status=lambda: {},
        access=Access(parse_origins(ALLOWED), TOKEN),
    )
    server = TestServer(PosApi(ctx).app(), host="127.0.0.1")
    await server.start_server()
    try:
        yield Api(server, store)
    finally:
        await server.close()
        store.close()


BODY = json.dumps(INVOICE).encode()
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON_TYPE = {"Content-Type": "application/json"}


async def test_a_cross_site_simple_post_is_refused(api: Api) -> None:
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        status, body, _ = await api.call(
            "POST", "/v1/invoices", BODY, **AUTH, **{"Content-Type": kind}
        )
        assert (status, body["error"]) == (415, "UNSUPPORTED_MEDIA_TYPE"), body
    status, body, _ = await api.call("POST", "/v1/reports/z", None, **AUTH)  # no type at all
    assert (status, body["error"]) == (415, "UNSUPPORTED_MEDIA_TYPE")
    # nothing was claimed: no idempotency key was taken
    assert api.store._conn.execute("SELECT count(*) FROM requests").fetchone() == (0,)


async def test_a_foreign_origin_is_refused_and_an_allowed_one_passes(api: Api) -> None:
    for origin in ("https://evil.example", "null", ALLOWED + ":8443", ALLOWED + "/"):
        status, body, headers = await api.call(
            "POST", "/v1/invoices", BODY, **AUTH, **JSON_TYPE, Origin=origin
        )
        assert (status, body["error"]) == (403, "ORIGIN_REFUSED"), origin
        assert "Access-Control-Allow-Origin" not in headers
        status, _, _ = await api.call("GET", "/v1/status", **AUTH, Origin=origin)
        assert status == 403
    status, body, headers = await api.call(
        "POST", "/v1/invoices", BODY, **AUTH, **JSON_TYPE, Origin=ALLOWED
    )
    assert (status, body["error"]) == (503, "NO_DEVICE")  # past access control
    assert headers["Access-Control-Allow-Origin"] == ALLOWED


async def test_preflight_gets_no_permissive_answer(api: Api) -> None:
    ask = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    status, _, headers = await api.call(
        "OPTIONS", "/v1/invoices", Origin="https://evil.example", **ask
    )
    assert status == 403 and not any(h.startswith("Access-Control") for h in headers)
    status, _, headers = await api.call("OPTIONS", "/v1/invoices", Origin=ALLOWED, **ask)
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == ALLOWED  # that origin, never *
    status, _, headers = await api.call("OPTIONS", "/v1/invoices")  # not a preflight
    assert status == 405 and "Access-Control-Allow-Origin" not in headers


async def test_a_rebound_host_name_is_refused(api: Api) -> None:
    status, body, _ = await api.call("GET", "/v1/status", **AUTH, Host="attacker.example:8631")
    assert (status, body["error"]) == (403, "HOST_REFUSED")
    for host in ("localhost:8631", "127.0.0.1", "[::1]:8631", socket.gethostname()):
        status, _, _ = await api.call("GET", "/v1/status", **AUTH, Host=host)
        assert status == 200, host


async def test_a_host_header_that_is_no_host_name_is_refused_not_a_server_error(api: Api) -> None:
    # urlsplit raises on these: each was a 500 and a logged traceback per request
    for host in ("[::1", "[zz]:80", "[", "a]b"):
        status, body, _ = await api.call("GET", "/v1/status", **AUTH, Host=host)
        assert (status, body["error"]) == (403, "HOST_REFUSED"), host


async def test_token_required_accepted_and_wrong(api: Api) -> None:
    status, body, headers = await api.call("POST", "/v1/invoices", BODY, **JSON_TYPE)
    assert (status, body["error"]) == (401, "UNAUTHORIZED")
    assert headers["WWW-Authenticate"] == "Bearer"
    for wrong in (TOKEN[:-1], TOKEN + "x", "", f"Basic {TOKEN}", "Bearer  "):
        header = wrong if wrong.startswith(("Basic", "Bearer")) else f"Bearer {wrong}"
        status, body, _ = await api.call(
            "POST", "/v1/invoices", BODY, **JSON_TYPE, Authorization=header
        )
        assert (status, body["error"]) == (401, "UNAUTHORIZED"), wrong
    for path in ("/v1/status", "/v1/documents/1"):
        assert (await api.call("GET", path))[0] == 401
    status, body, _ = await api.call("POST", "/v1/invoices", BODY, **JSON_TYPE, **AUTH)
    assert (status, body["error"]) == (503, "NO_DEVICE")
    # liveness and metrics stay open (they tell nothing about a sale)
    assert (await api.call("GET", "/v1/health"))[0] == 200
    async with (
        aiohttp.ClientSession() as session,
        session.get(str(api.server.make_url("/metrics"))) as resp,
    ):
        assert resp.status == 200


def test_token_file_rules(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o644)
    with pytest.raises(TokenFileError, match="other users"):
        read_token(path)
    path.chmod(0o640)
    assert read_token(path) == TOKEN
    path.write_text("short")
    with pytest.raises(TokenFileError, match="16"):
        read_token(path)
    with pytest.raises(TokenFileError, match="cannot read"):
        read_token(tmp_path / "missing")
    assert load_access("", "") == Access()
    with pytest.raises(ValueError, match="origin"):
        parse_origins("https://pos.example.cn/path")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_shop_over_a_unix_socket_with_token_and_private_state(shop: Shop) -> None:
    """End to end: the socket is 0660, a till with the token issues over it, a page's
    text/plain POST issues nothing, and what syncd writes is readable by it alone."""
    token = shop.root / "pos.token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    sock = shop.root / "run" / "api.sock"
    shop.api_headers = dict(AUTH)
    shop.start_chain()
    shop.start_device()
    shop.start_syncd("--api-socket", str(sock), "--api-token-file", str(token))
    assert stat.S_ISSOCK(os.stat(sock).st_mode) and _mode(sock) == 0o660
    assert os.stat(sock).st_gid == os.getegid()  # the service's group
    status, body, _ = http("POST", f"{shop.api}/v1/invoices", INVOICE)
    assert (status, body["error"]) == (401, "UNAUTHORIZED")
    status, body, _ = http(
        "POST",
        f"{shop.api}/v1/invoices",
        json.dumps(INVOICE).encode(),
        {"Content-Type": "text/plain", **AUTH},
    )
    assert (status, body["error"]) == (415, "UNSUPPORTED_MEDIA_TYPE")
    status, issued, _ = unix_post(sock, "/v1/invoices", INVOICE, AUTH)
    assert status == 201 and issued["counter"] == 1, issued
    shop.wait_synced(1)
    for state in (shop.root / "syncd", shop.root / "printer"):  # syncd's and the printer's
        files = [p for p in state.rglob("*") if p.is_file()]
        modes = {p.name: oct(_mode(p)) for p in files}
        assert files and all(_mode(p) == 0o600 for p in files), modes
        assert _mode(state) & 0o077 == 0, oct(_mode(state))


def unix_post(
    path: Path, route: str, body: Any, headers: dict[str, str], method: str = "POST"
) -> tuple[int, Any, bytes]:
    """One request over the API's Unix socket (a till's own Host header, any name)."""
    data = b"" if body is None else json.dumps(body).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    if body is not None:
        head += "Content-Type: application/json\r\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(path))
        s.sendall(
            f"{method} {route} HTTP/1.1\r\nHost: till\r\n"
            f"{head}Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
            + data
        )
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    head_bytes, _, payload = reply.partition(b"\r\n\r\n")
    return int(head_bytes.split(b" ", 2)[1]), json.loads(payload), head_bytes


def test_a_web_page_issues_nothing_through_a_real_shop(shop: Shop) -> None:
    """The attack as a page would make it: before, each of these issued a document."""
    shop.start_chain()
    shop.start_device()
    shop.start_syncd()
    page = {"Content-Type": "text/plain", "Origin": "https://evil.example"}
    simple = http("POST", f"{shop.api}/v1/invoices", json.dumps(INVOICE).encode(), page)
    assert (simple[0], simple[1]["error"]) == (403, "ORIGIN_REFUSED")
    no_origin = {"Content-Type": "text/plain"}  # a page that hid its Origin
    plain = http("POST", f"{shop.api}/v1/invoices", json.dumps(INVOICE).encode(), no_origin)
    assert (plain[0], plain[1]["error"]) == (415, "UNSUPPORTED_MEDIA_TYPE")
    z = http("POST", f"{shop.api}/v1/reports/z", b"", no_origin)
    assert (z[0], z[1]["error"]) == (415, "UNSUPPORTED_MEDIA_TYPE")
    foreign = http("POST", f"{shop.api}/v1/invoices", INVOICE, {"Origin": "https://evil.example"})
    assert foreign[0] == 403
    assert shop.device_status().get("counter", 0) == 0  # the printer signed nothing
    status, issued = shop.issue()  # a till (JSON, no Origin) still issues
    assert status == 201 and issued["counter"] == 1, issued


def test_unix_socket_only(shop: Shop) -> None:
    """`--api unix:PATH`: the API on a 0660 socket and on no TCP port."""
    sock = shop.root / "api.sock"
    shop.start_chain()
    shop.start_device()
    proc = shop.start_syncd("--api", f"unix:{sock}", wait_online=False)
    assert proc.ready["url"] == f"unix:{sock}"
    assert stat.S_ISSOCK(os.stat(sock).st_mode) and _mode(sock) == 0o660
    wait_for(
        lambda: (
            unix_post(sock, "/v1/status", None, {}, "GET")[1]["devices"][0]["state"] == "online"
        ),
        15,
        "printer online",
    )
    status, issued, _ = unix_post(sock, "/v1/invoices", INVOICE, {})
    assert status == 201 and issued["counter"] == 1, issued
    listening = Path("/proc/net/tcp").read_text() + Path("/proc/net/tcp6").read_text()
    syncd_inodes = {
        os.readlink(f"/proc/{proc.proc.pid}/fd/{fd}")
        for fd in os.listdir(f"/proc/{proc.proc.pid}/fd")
    }
    tcp_listeners = [
        line.split()[9]
        for line in listening.splitlines()[1:]
        if line.split()[3] == "0A"  # LISTEN
    ]
    assert not [i for i in tcp_listeners if f"socket:[{i}]" in syncd_inodes]


def test_access_options_in_the_file_and_as_flags(tmp_path: Path) -> None:
    from syncd import config as config_mod

    conf = tmp_path / "syncd.toml"
    conf.write_text(
        '[api]\nallowed_origins = ["https://pos.example.cn", "http://10.0.0.5:8080"]\n'
        'token_file = "/etc/taxctl/pos.token"\nlisten = "unix:/run/x/api.sock"\n'
        '[[device]]\nport = "/dev/ttyUSB0"\n'
    )
    args = ["--config", str(conf), "--state", str(tmp_path), "--chain", "http://127.0.0.1:1"]
    cfg = config_mod.load(config_mod.namespace(args))
    assert parse_origins(cfg["api.allowed_origins"]) == {
        "https://pos.example.cn",
        "http://10.0.0.5:8080",
    }
    assert cfg["api.token_file"] == "/etc/taxctl/pos.token"
    assert cfg.api_unix == Path("/run/x/api.sock")
    for flag, value, problem in (
        ("--api-allowed-origins", "https://pos.example.cn/till", "origin"),
        ("--api", "unix:relative.sock", "absolute"),
    ):
        with pytest.raises(config_mod.ConfigError, match=problem):
            config_mod.load(config_mod.namespace([*args, flag, value]))
