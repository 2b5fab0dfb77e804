"""kill -9 of the device at random moments: nothing acknowledged is ever lost."""

from __future__ import annotations

import asyncio
import random
import signal
from pathlib import Path

import pytest

from device.client import DeviceClient, LinkError
from tests.device.conftest import INVOICE
from tests.helpers import check_journal, export_documents, spawn

KILLS = 6


async def issue_until_killed(link: Path, acked: dict[int, bytes]) -> int:
    client = await DeviceClient.open(str(link), response_timeout=0.3, max_retries=3)

    async def worker() -> None:
        for _ in range(10_000):  # bounded; the kill ends it long before
            try:
                response = await client.issue(INVOICE)
            except LinkError:
                return
            acked[response["counter"]] = response["document"]

    try:
        tasks = [asyncio.create_task(worker()) for _ in range(8)]
        done, pending = await asyncio.wait(tasks, timeout=30)
        assert not pending, "issuing did not stop after the device was killed"
        return sum(1 for t in done if t.exception() is None)
    finally:
        await client.close()


@pytest.mark.parametrize("seed", [1])
async def test_sigkill_during_issuing_loses_nothing_acknowledged(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    state, link = tmp_path / "state", tmp_path / "tty"
    args = [
        "device",
        "run",
        "--state",
        str(state),
        "--link",
        str(link),
        "--training",
        "--offline-amount",
        str(10**15),
    ]
    acked: dict[int, bytes] = {}
    public_key = b""
    for _ in range(KILLS):
        proc = spawn(args)
        try:
            killer = asyncio.get_running_loop().call_later(
                rng.uniform(0.05, 0.4), proc.proc.send_signal, signal.SIGKILL
            )
            await issue_until_killed(link, acked)
            killer.cancel()
        finally:
            proc.stop(signal.SIGKILL)
        assert proc.proc.returncode == -signal.SIGKILL
    # One clean run at the end to read the public key and check the device still works.
    proc = spawn(args)
    try:
        client = await DeviceClient.open(str(link))
        try:
            public_key = (await client.info())["public_key"]
            last = await client.issue(INVOICE)
            acked[last["counter"]] = last["document"]
        finally:
            await client.close()
    finally:
        assert proc.stop() == 0
    rows = export_documents(state)
    journal = {row["counter"]: row["raw"] for row in rows}
    assert sorted(journal) == list(range(1, len(rows) + 1)), "counters are not gapless"
    missing = [c for c, raw in acked.items() if journal.get(c) != raw]
    assert not missing, f"acknowledged but not in the journal: {missing[:10]}"
    check_journal([journal[c] for c in sorted(journal)], public_key)
    assert len(acked) > 10 * KILLS, "the run barely issued anything between the kills"
    assert len(rows) >= len(acked)  # committed-but-unanswered documents are allowed
