"""Group commit under load: a failed commit refuses exactly its own documents.

The writer signs the next group while the previous one is being committed.
When a commit fails, the documents signed on top of it must be signed
again, and the host sees a refusal only for the requests whose commit
failed: counters and numbers stay gapless, the hash chain unbroken.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from device.journal import Batch, JournalError
from device.protocol import cose
from device.protocol.commands import Command
from device.protocol.document import ZERO_HASH, document_hash, parse_document
from device.protocol.framing import Frame, FrameType, encode_frame
from device.protocol.status import DeviceError, Status
from tests.device.conftest import INVOICE, Harness, wide_limits

REQUESTS = 48


def _record_commits(h: Harness, *, fail: tuple[int, Exception] | None = None) -> list[int]:
    """Record the size of every document batch the journal is given. With
    `fail=(which, error)` the `which`-th fails with `error`, slowly, so the next
    group is signed on top of it meanwhile."""
    journal = h.fw.journal
    commit = journal.commit
    sizes: list[int] = []
    lock = threading.Lock()

    def recording(batch: Batch) -> None:
        if batch.documents:
            with lock:
                sizes.append(len(batch.documents))
                failing = fail[1] if fail is not None and len(sizes) == fail[0] else None
            if failing is not None:
                time.sleep(0.05)
                raise failing
        commit(batch)

    journal.commit = recording  # type: ignore[method-assign]
    return sizes


@pytest.mark.parametrize(
    "error",
    [JournalError("injected write error"), RuntimeError("a bug in the journal")],
    ids=["journal-error", "unexpected-exception"],
)
async def test_a_failed_commit_refuses_only_its_own_documents(start: Any, error: Exception) -> None:
    h: Harness = await start(limits=wide_limits())
    sizes = _record_commits(h, fail=(2, error))
    outcomes = await asyncio.gather(
        *(h.client.issue(INVOICE) for _ in range(REQUESTS)), return_exceptions=True
    )
    refused = [o for o in outcomes if isinstance(o, DeviceError)]
    issued = [o for o in outcomes if isinstance(o, dict)]
    assert len(refused) + len(issued) == REQUESTS, outcomes
    assert {e.status for e in refused} == {Status.INTERNAL_ERROR}
    assert len(refused) == sizes[1], "exactly the failed batch is refused"
    assert len(sizes) > 2, "the load never had a group signed behind the failing one"
    # Gapless: the failed documents' counters and numbers were given again.
    assert sorted(o["counter"] for o in issued) == list(range(1, len(issued) + 1))
    assert sorted(int(o["number"]) for o in issued) == list(range(1, len(issued) + 1))
    assert h.fw.journal.count() == len(issued) == h.fw.head.counter
    previous = ZERO_HASH
    for counter in range(1, len(issued) + 1):
        row = h.fw.journal.document(counter)
        assert row is not None
        doc = parse_document(row.doc)
        assert doc.payload["prev_hash"] == previous
        assert cose.decode_sign1(row.doc).verify(h.fw.key.public_key)
        previous = document_hash(row.doc)
    # Later requests go on from there.
    after = await h.client.issue(INVOICE)
    assert after["counter"] == len(issued) + 1


async def test_status_counts_what_this_run_did(start: Any, tmp_path: Any) -> None:
    h: Harness = await start(limits=wide_limits())
    zero = {"document_commits": 0, "documents": 0, "naks_sent": 0, "busy_sent": 0, "replays": 0}
    assert (await h.client.status())["since_start"] == zero
    sizes = _record_commits(h)
    await asyncio.gather(*(h.client.issue(INVOICE) for _ in range(REQUESTS)))
    assert len(sizes) < REQUESTS, "concurrent requests should share commits"
    rid = h.client.new_request_id()
    first = await h.client.issue(INVOICE, request_id=rid)
    assert await h.client.issue(INVOICE, request_id=rid) == first  # a retransmission
    damaged = bytearray(encode_frame(Frame(FrameType.REQUEST, rid + 1, Command.STATUS, 0, b"")))
    damaged[-2] ^= 0x01  # one bit of the FCS: the device NAKs it
    h.client.port.write(bytes(damaged))
    h.server.max_in_flight = 2  # the host still sends 8 at once: BUSY for the rest
    await asyncio.gather(*(h.client.issue(INVOICE) for _ in range(8)))
    counts = (await h.client.status())["since_start"]
    assert h.client.stats.busy > 0
    assert counts == {
        "document_commits": len(sizes),
        "documents": REQUESTS + 1 + 8,
        "naks_sent": 1,
        "busy_sent": h.client.stats.busy,
        "replays": 1,
    }
    assert sum(sizes) == REQUESTS + 1 + 8
    await h.close()
    # Counted per run, not journaled: a restarted device starts again from zero.
    again: Harness = await start(state=h.state, link=tmp_path / "tty2", clock=h.clock)
    status = await again.client.status()
    assert status["since_start"] == zero and status["counter"] == REQUESTS + 1 + 8
