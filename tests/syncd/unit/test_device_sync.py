"""DeviceSync with a real printer on an in-memory line and an in-memory chain."""

from __future__ import annotations

import asyncio
from pathlib import Path

from device.protocol.status import Status
from syncd.chainhealth import ChainHealth, Consortium
from syncd.chainport import ChainDown, SubmitResult, SubmitStatus
from syncd.cursor import CursorStore
from syncd.engine import DeviceSync, SyncSettings
from syncd.metrics import SyncdMetrics
from tests.device.conftest import INVOICE
from tests.syncd.unit.memory import MemoryChain, Printer, memory_printer

FAST = SyncSettings(poll_interval=0.05, backoff_initial=0.01, backoff_max=0.02, batch_max=3)


def engine(printer: Printer, chain: MemoryChain, tmp_path: Path, **kw: object) -> DeviceSync:
    metrics = SyncdMetrics()
    return DeviceSync(
        printer.link,
        chain,
        CursorStore(tmp_path),
        kw.pop("settings", FAST),  # type: ignore[arg-type]
        health=ChainHealth(metrics),
        consortium=Consortium(chain),
        metrics=metrics,
        **kw,  # type: ignore[arg-type]
    )


async def issue(printer: Printer, count: int) -> None:
    for _ in range(count):
        await printer.client.issue(INVOICE)


async def synced(sync: DeviceSync, through: int, seconds: float = 10) -> None:
    """Run the engine until the device holds receipts through `through` (bounded)."""
    stop = asyncio.Event()
    task = asyncio.create_task(sync.run(stop))
    try:
        async with asyncio.timeout(seconds):
            while sync.link.synced_through < through:
                await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_every_document_reaches_the_chain_once_in_batches(tmp_path: Path) -> None:
    async with memory_printer(tmp_path) as printer:
        await issue(printer, 7)
        chain = MemoryChain()
        sync = engine(printer, chain, tmp_path)
        await synced(sync, 7)
        assert len(chain.receipts) == 7 and max(chain.submissions) <= FAST.batch_max
        assert (await printer.client.status())["synced_through"] == 7
        assert sync.cursors.device(printer.link.device_id or "").synced_through == 7
        assert sync.submitted == 7


async def test_a_lost_chain_answer_is_resubmitted_and_answered_duplicate(tmp_path: Path) -> None:
    async with memory_printer(tmp_path) as printer:
        await issue(printer, 2)
        chain = MemoryChain()
        # The chain takes the batch, but its answer is lost on the way back.
        lost = ChainDown("timeout")
        sync = engine(printer, chain, tmp_path)

        original = chain.submit

        async def submit_then_lose(documents: list[bytes]) -> list[SubmitResult]:
            results = await original(documents)
            if chain.submissions == [2]:
                raise lost
            return results

        chain.submit = submit_then_lose  # type: ignore[method-assign]
        await synced(sync, 2)
        assert chain.submissions == [2, 2] and len(chain.receipts) == 2
        assert sync.health.ok is True


async def test_a_rejected_document_is_recorded_and_holds_back_the_rest(tmp_path: Path) -> None:
    async with memory_printer(tmp_path) as printer:
        await issue(printer, 2)
        rejected = SubmitResult(SubmitStatus.REJECTED, code="totals_mismatch", message="no")
        held = SubmitResult(SubmitStatus.HELD)
        chain = MemoryChain(script=[[rejected, held]])
        settings = SyncSettings(
            poll_interval=0.05,
            backoff_initial=0.01,
            backoff_max=0.02,
            reject_retry_interval=0.01,
            reject_retries=2,
        )
        sync = engine(printer, chain, tmp_path, settings=settings)
        await synced(sync, 2)  # tried again after the interval, and taken
        cursor = sync.cursors.device(printer.link.device_id or "")
        assert chain.submissions[0] == 2 and not cursor.rejected  # forgotten once synced
        assert sync.metrics is not None
        assert sync.metrics.chain_errors.get("totals_mismatch") == 1


async def test_a_receipt_the_device_refuses_is_reported_not_synced(tmp_path: Path) -> None:
    async with memory_printer(tmp_path) as printer:
        await issue(printer, 1)
        chain = MemoryChain(signers=1)  # one node of four: no quorum, the receipt is refused
        stop = asyncio.Event()
        sync = engine(printer, chain, tmp_path)
        task = asyncio.create_task(sync.run(stop))
        try:
            async with asyncio.timeout(10):
                while sync.last_ack_error is None:
                    await asyncio.sleep(0.01)
        finally:
            stop.set()
            await asyncio.wait_for(task, 5)
        assert printer.link.synced_through == 0
        assert sync.metrics is not None
        labels = {k[0] for k in sync.metrics.chain_errors.values}
        assert any(label.startswith("ACK_") for label in labels), labels
        assert Status.OK.name not in labels


async def test_a_sale_during_a_round_is_synced_without_waiting_for_the_poll(
    tmp_path: Path,
) -> None:
    """The API wakes the engine after each sale. A wake that came while a round was already
    past its FETCH was cleared when the round ended, so that sale waited a whole poll
    interval (a second by default; a minute here)."""
    async with memory_printer(tmp_path) as printer:
        await issue(printer, 1)
        chain = MemoryChain()
        slow_poll = SyncSettings(poll_interval=60, gather=0, backoff_initial=0.01)
        sync = engine(printer, chain, tmp_path, settings=slow_poll)
        original = chain.submit

        async def submit_and_sell(documents: list[bytes]) -> list[SubmitResult]:
            if chain.submissions == []:  # the first round has fetched its page: a sale now
                await issue(printer, 1)
                sync.wake()
            return await original(documents)

        chain.submit = submit_and_sell  # type: ignore[method-assign]
        await synced(sync, 2, seconds=5)
        assert len(chain.receipts) == 2


async def test_a_woken_round_takes_the_sales_of_the_next_moment_along(tmp_path: Path) -> None:
    """sync.gather: after a wake, the round waits that long, so sales arriving together
    go to the chain in one submission rather than one each."""
    async with memory_printer(tmp_path) as printer:
        chain = MemoryChain()
        gathering = SyncSettings(poll_interval=60, gather=0.3, backoff_initial=0.01)
        sync = engine(printer, chain, tmp_path, settings=gathering)
        stop = asyncio.Event()
        task = asyncio.create_task(sync.run(stop))
        try:
            async with asyncio.timeout(5):
                while sync.rounds < 1:  # the first round found nothing and went to sleep
                    await asyncio.sleep(0.01)
                for _ in range(3):  # three sales, each waking the engine as the API does
                    await issue(printer, 1)
                    sync.wake()
                while sync.link.synced_through < 3:
                    await asyncio.sleep(0.01)
        finally:
            stop.set()
            await asyncio.wait_for(task, 5)
        assert chain.submissions == [3]
