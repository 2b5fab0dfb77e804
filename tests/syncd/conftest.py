"""Every POS answer a syncd test gets, over HTTP from a Shop's syncd or from an in-process
PosApi app, checked against docs/pos-openapi.yaml once the test is over
(tests/syncd/pos_contract.py). The shop fixture comes from tests/conftest.py."""

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from aiohttp import web

from syncd.api import PosApi
from syncd.service import Daemon
from tests import shop as shop_module
from tests.syncd.pos_contract import MAX_RECORDED, RECORDER, Answer

REAL_STATUS = web.AppKey("real_status", bool)


def _from_http(method: str, url: str, status: int, headers: dict[str, str], raw: bytes) -> None:
    kind = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    lower = {k.lower(): v for k, v in headers.items()}
    RECORDER.add(Answer(method, urlsplit(url).path, status, kind.split(";")[0], raw, lower))


async def _from_app(request: web.Request, response: web.StreamResponse) -> None:
    if request.path == "/v1/status" and not request.app.get(REAL_STATUS, False):
        return  # a test's stand-in for the daemon's state (ApiContext(status=dict)), not syncd's
    body = response.body if isinstance(response, web.Response) else b""
    RECORDER.add(
        Answer(
            request.method,
            request.path,
            response.status,
            response.content_type,
            body if isinstance(body, bytes) else b"",
            {k.lower(): v for k, v in response.headers.items()},
        )
    )


@pytest.fixture(autouse=True)
def pos_answers_conform(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    original = PosApi.app

    def app(self: PosApi) -> web.Application:
        application = original(self)
        application[REAL_STATUS] = isinstance(getattr(self.ctx.status, "__self__", None), Daemon)
        application.on_response_prepare.append(_from_app)
        return application

    monkeypatch.setattr(PosApi, "app", app)
    shop_module.ON_POS_ANSWER.append(_from_http)
    RECORDER.answers.clear()
    RECORDER.dropped = 0
    RECORDER.active = True
    try:
        yield
    finally:
        RECORDER.active = False
        shop_module.ON_POS_ANSWER.remove(_from_http)
    problems = RECORDER.problems()
    assert not RECORDER.dropped, f"more than {MAX_RECORDED} POS answers in one test"
    assert not problems, "answers not as docs/pos-openapi.yaml says:\n" + "\n".join(problems[:20])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if RECORDER.checked:
        terminalreporter.write_line(
            f"POS answers checked against docs/pos-openapi.yaml: {RECORDER.checked}"
        )
