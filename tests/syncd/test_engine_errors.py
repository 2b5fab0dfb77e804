"""A device's sync loop outlives whatever its chain port throws, and the daemon outlives
one device's task dying: in-process, with an in-memory chain and a scripted device."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from hostsim.chain.errors import Code
from syncd import answers
from syncd.chainhealth import ChainHealth, Consortium
from syncd.chainport import ChainDown, ConsortiumOffer, Registration, SubmitResult, SubmitStatus
from syncd.config import Config, DeviceConfig
from syncd.cursor import CursorStore
from syncd.device_answers import DeviceInfo, DeviceStatus
from syncd.engine import DeviceSync, SyncSettings
from syncd.metrics import SyncdMetrics
from syncd.registration import Registrar, RegistrationSettings
from syncd.verdict import Rejected

DEVICE = "TC0000000000AB"
FAST = SyncSettings(poll_interval=0.05, backoff_initial=0.01, backoff_max=0.02, batch_max=4)


class Printer:
    """The device side of FETCH and ACK_SYNC, over a list of documents."""

    def __init__(self, count: int) -> None:
        self.documents = [f"doc-{c}".encode() for c in range(1, count + 1)]
        self.synced = 0
        self.acks: list[int] = []

    async def fetch(self, first: int, max_bytes: int) -> dict[str, Any]:
        first = max(first, self.synced + 1)
        docs = self.documents[first - 1 : first - 1 + 3]
        return {
            "first": first,
            "documents": docs,
            "last_counter": len(self.documents),
            "synced_through": self.synced,
        }

    async def ack_sync(self, receipts: list[dict[str, Any]], consortium: Any) -> dict[str, Any]:
        counter = receipts[0]["counter"]
        self.acks.append(counter)
        self.synced = max(self.synced, counter)
        return {"synced_through": self.synced}


class Link:
    """What DeviceSync needs of a DeviceLink."""

    def __init__(self, printer: Printer) -> None:
        self.printer = printer
        self.online = True
        self.device_id = DEVICE
        self.info = DeviceInfo(DEVICE, bytes(32), True, True, (), None, b"nodes", None)
        self.status = DeviceStatus(len(printer.documents), 0, 100, True, (), None, None)
        self.config = DeviceConfig(port="/dev/fake", name="till")
        self.label = "till"
        self.suspect: list[str] = []
        self.line_rate: float | None = None  # a fast line: pages as large as configured

    def require(self) -> Printer:
        return self.printer

    @property
    def synced_through(self) -> int:
        return self.status.synced_through

    def note_counters(self, counter: int, synced_through: int) -> int:
        before = self.status.synced_through
        self.status = self.status.with_counters(counter, synced_through)
        return self.status.synced_through - before

    def adopt_consortium(self, raw: bytes) -> None:
        self.info = self.info.with_consortium(raw)

    def mark_suspect(self, reason: str) -> None:
        self.suspect.append(reason)

    async def wait_online(self) -> bool:
        return True


class MemoryChain:
    """A ChainGateway in memory: each call to submit takes the next scripted failure, if any.
    A failure is an exception to raise or a list of results to give instead."""

    url = "memory:"

    def __init__(self, script: Sequence[BaseException | list[SubmitResult]] = ()) -> None:
        self.script = list(script)
        self.ledger: dict[bytes, int] = {}
        self.calls = 0

    async def submit(self, documents: Sequence[bytes]) -> list[SubmitResult]:
        self.calls += 1
        if self.script:
            step = self.script.pop(0)
            if isinstance(step, BaseException):
                raise step
            return step
        out = []
        for raw in documents:
            counter = int(raw.split(b"-")[1])
            status = SubmitStatus.DUPLICATE if raw in self.ledger else SubmitStatus.COMMITTED
            self.ledger[raw] = counter
            out.append(SubmitResult(status, {"counter": counter}, counter=counter))
        return out

    async def consortium(self) -> bytes:
        return b"nodes"

    async def consortium_offer(self) -> ConsortiumOffer:
        return ConsortiumOffer(b"nodes")

    async def register(self, **_: Any) -> Registration:
        return Registration(DEVICE, b"cert", 1, ())

    async def allocate_segment(self, device_id: str, request: bytes) -> bytes:
        return b"segment"

    async def record_segment(self, device_id: str, raw: bytes) -> None:
        return None

    async def close(self) -> None:
        return None


async def sync_until(
    tmp_path: Path, chain: MemoryChain, printer: Printer, metrics: SyncdMetrics
) -> DeviceSync:
    """Run one DeviceSync until the printer is synced (or fail after a generous bound)."""
    health = ChainHealth(metrics)
    sync = DeviceSync(
        Link(printer),  # type: ignore[arg-type]
        chain,
        CursorStore(tmp_path),
        FAST,
        health=health,
        consortium=Consortium(chain),
        metrics=metrics,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(sync.run(stop))
    try:
        async with asyncio.timeout(10):
            while printer.synced < len(printer.documents):
                if task.done():
                    task.result()  # the loop ended: show why
                    raise AssertionError("the sync loop returned before syncing")
                await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    return sync


def bad_answer() -> ChainDown:
    return ChainDown("the chain's answer is not what its API defines: results", "BAD_ANSWER")


async def test_a_bug_in_chain_io_is_logged_once_counted_and_the_round_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    printer = Printer(10)
    chain = MemoryChain(
        [AttributeError("'int' object has no attribute 'get'")] * 3
        + [TypeError("unhashable type: 'list'"), bad_answer()]
    )
    metrics = SyncdMetrics()
    caplog.set_level(logging.DEBUG, "taxctl.syncd")
    sync = await sync_until(tmp_path, chain, printer, metrics)
    # every document once on the chain, the device synced, nothing acknowledged twice
    assert sorted(chain.ledger.values()) == list(range(1, 11))
    assert printer.synced == 10 and printer.acks == sorted(set(printer.acks))
    assert sync.failures == 4
    assert metrics.task_failures.get("sync", "/dev/fake") == 4
    assert metrics.chain_errors.get("BAD_ANSWER") == 1
    tracebacks = [r for r in caplog.records if r.exc_info]
    # one traceback per distinct failure, not one per retry
    assert [r.exc_info[0] for r in tracebacks if r.exc_info] == [AttributeError, TypeError]


async def test_a_port_giving_the_wrong_number_of_results_is_retried_not_parked(
    tmp_path: Path,
) -> None:
    printer = Printer(6)
    one = [SubmitResult(SubmitStatus.COMMITTED, {"counter": 1}, counter=1)]
    chain = MemoryChain([one, one])
    metrics = SyncdMetrics()
    await sync_until(tmp_path, chain, printer, metrics)  # parked would mean 600 s
    assert sorted(chain.ledger.values()) == list(range(1, 7))
    assert metrics.chain_errors.get("BAD_ANSWER") == 2


async def test_health_shows_the_bad_answer_code_until_the_chain_answers_well() -> None:
    metrics = SyncdMetrics()
    health = ChainHealth(metrics)
    health.failure("BAD_ANSWER", "http://chain: the chain's answer is not what its API defines")
    assert (health.word, health.last_code) == ("down", "BAD_ANSWER")
    assert metrics.chain_errors.get("BAD_ANSWER") == 1
    health.success()
    assert (health.word, health.last_code, health.last_error) == ("ok", None, None)


def test_rejection_codes_of_odd_types_are_no_known_code() -> None:
    registrar = Registrar(MemoryChain(), RegistrationSettings())
    assert registrar.on_rejections(DEVICE, [None, 5, b"unknown_device", ["x"]]) is False
    assert registrar.on_rejections(DEVICE, [None, "unknown_device"]) is True


# --- the daemon: one device's task dying ---------------------------------------------------


async def test_a_crashed_engine_is_restarted_and_the_daemon_keeps_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from syncd import service
    from syncd.link import DeviceLink

    runs: list[str] = []

    async def engine_run(self: DeviceSync, stop: asyncio.Event) -> None:
        runs.append(self.link.config.port)
        if len(runs) == 1:
            raise RuntimeError("a bug in the engine")
        await stop.wait()

    async def link_run(self: DeviceLink, stop: asyncio.Event) -> None:
        await stop.wait()

    monkeypatch.setattr(DeviceSync, "run", engine_run)
    monkeypatch.setattr(DeviceLink, "run", link_run)
    monkeypatch.setattr(service, "RESTART_INITIAL", 0.05, raising=False)
    cfg = Config(state=tmp_path / "state", devices=(), chain_urls=("http://127.0.0.1:9",))
    daemon = service.Daemon(cfg, chain=MemoryChain())
    try:
        item = daemon._attach(DeviceConfig(port="/dev/fake0", name="till"))
        async with asyncio.timeout(5):
            while len(runs) < 2:
                await asyncio.sleep(0.01)
        assert not daemon.stop_event.is_set() and daemon.exit_code == 0
        assert item.sync_task is not None and not item.sync_task.done()
        assert daemon.metrics.task_failures.get("sync", "/dev/fake0") == 1
        await daemon._detach(item)
        assert item.sync_task.done() and item.sync_task.exception() is None
    finally:
        daemon.store.close()


def test_codes_a_chain_makes_up_cannot_grow_the_metrics_without_bound(tmp_path: Path) -> None:
    """Each code in a chain's answer became a label of taxctl_syncd_chain_errors_total: a
    chain answering every retry (or every rejected document) with a new code grew syncd's
    memory and its /metrics page for as long as it ran (10,000 answers: 1.4 MB of page).
    Codes the API defines, and syncd's own, keep their line; any other is `other`."""
    metrics = SyncdMetrics()
    health = ChainHealth(metrics)
    for index in range(10_000):
        health.failure(f"made_up_{index:05d}", "HTTP 503")
    health.failure("BAD_ANSWER", "results")
    health.failure("unavailable", "HTTP 503")
    sync = DeviceSync(
        Link(Printer(1)),  # type: ignore[arg-type]
        MemoryChain(),
        CursorStore(tmp_path),
        FAST,
        health=health,
        consortium=Consortium(MemoryChain()),
        metrics=metrics,
    )
    rejected = [Rejected(c, f"invented_{c}", "no") for c in range(1, 2001)]
    rejected.append(Rejected(2001, "number_used", "twice"))
    sync.rejections.record(DEVICE, rejected)
    page = metrics.render()
    assert len(page) < 20_000, f"a /metrics page of {len(page)} bytes"
    assert set(metrics.chain_errors.values) == {
        ("other",),
        ("BAD_ANSWER",),
        ("unavailable",),
        ("number_used",),
    }
    assert metrics.chain_errors.get("other") == 12_000  # still counted, on one line
    assert metrics.rejected.get(DEVICE, "other") == 2000
    # the cursor keeps each document's own code for the operator
    assert sync.cursors.device(DEVICE).rejected[7].code == "invented_7"


def test_the_codes_syncd_labels_are_the_chain_api_codes() -> None:
    assert {code.value for code in Code} == answers.CHAIN_CODES
