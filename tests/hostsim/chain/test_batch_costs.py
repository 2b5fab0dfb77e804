"""What a batch no longer pays for, and that its outcome is the same: the ledger is asked
only about what it may hold, receipts and node signatures are what the straightforward
code made (kept here as the oracle)."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import cbor2
import pytest

from device.protocol import chainapi, trust
from device.protocol.document import parse_document
from device.protocol.keys import KeyPair
from hostsim.chain.blocks import assemble
from hostsim.chain.node import Chain
from hostsim.chain.quorum import NodeSet
from tests.hostsim.chain.conftest import DeviceSim, resign

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 9, 16, 33])
async def test_compact_receipts_are_the_full_ones_compacted(size: int) -> None:
    hashes = [secrets.token_bytes(32) for _ in range(size)]
    block = assemble("taxctl-training", 7, bytes(32), hashes, "2026-01-01T00:00:00Z")
    block.signatures = NodeSet({"bureau": KeyPair.generate()}).sign(block.header)
    for position in range(size):
        for device_id, counter in ((None, None), ("TC0123456789AB", position + 1)):
            full = block.receipt(position, device_id, counter)
            compact = block.receipt(position, device_id, counter, compact=True)
            expected = chainapi.compact_receipt(full)
            assert compact == expected and list(compact) == list(expected)
            assert cbor2.dumps(compact) == cbor2.dumps(expected)
            assert chainapi.full_receipt(compact, block.attestation()) == full


async def test_nodes_sign_what_sign_header_signs() -> None:
    keys = {f"node{i}": KeyPair.generate() for i in range(4)}
    nodes = NodeSet(keys)
    nodes.partition(["node2"])
    block = assemble("taxctl-training", 3, bytes(32), [bytes(32)], "2026-01-01T00:00:00Z")
    assert nodes.sign(block.header) == [
        {"node_id": n, "signature": trust.sign_header(keys[n], block.header)}
        for n in ("node0", "node1", "node3")
    ]


def spy_lookups(chain: Chain, monkeypatch: pytest.MonkeyPatch) -> list[list[bytes]]:
    """Every list of hashes the engine asks the ledger about, from now on (an empty one
    runs no query)."""
    asked: list[list[bytes]] = []
    lookup = chain.ledger.txs_hashes

    def spied(hashes: Any) -> dict[bytes, tuple[int, int]]:
        if hashes:
            asked.append(list(hashes))
        return lookup(hashes)

    monkeypatch.setattr(chain.ledger, "txs_hashes", spied)
    return asked


async def test_only_documents_at_or_below_the_tip_are_looked_up(
    chain: Chain, device: DeviceSim, device_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    await chain.acts.register(None, device.certificate, device.segments, 5)
    first = device.issue(4)
    before = await chain.engine.submit(first, 5)
    assert {r.status for r in before} == {"committed"}
    asked = spy_lookups(chain, monkeypatch)
    stranger = device_factory().issue(1)  # a device the chain never registered
    later = device.issue(3)
    results = await chain.engine.submit([*first[1:3], *later, *stranger], 5)
    assert [r.status for r in results] == ["duplicate"] * 2 + ["committed"] * 3 + ["rejected"]
    assert [(r.height, r.position) for r in results[:2]] == [
        (r.height, r.position) for r in before[1:3]
    ]
    assert results[-1].code is not None and results[-1].code.value == "unknown_device"
    assert asked == [[parse_document(d).hash for d in first[1:3]]]
    # a batch of what comes next asks nothing
    assert {r.status for r in await chain.engine.submit(device.issue(2), 5)} == {"committed"}
    assert asked == [[parse_document(d).hash for d in first[1:3]]]


async def reopen(data: Path) -> Chain:
    chain = Chain.open(data, training=True, block_interval=0.001)
    chain.engine.start()
    return chain


async def test_a_committed_number_is_used_across_a_restart(
    tmp_path: Path, device: DeviceSim
) -> None:
    chain = await reopen(tmp_path / "ledger")
    await chain.acts.register(None, device.certificate, device.segments, 5)
    first, second = device.issue(2)
    assert {r.status for r in await chain.engine.submit([first], 5)} == {"committed"}
    await chain.engine.stop()
    chain.close()
    chain = await reopen(tmp_path / "ledger")
    try:
        reused = resign(device, second, number=parse_document(first).number)
        [result] = await chain.engine.submit([reused], 5)
        assert result.code is not None and result.code.value == "number_used"
        assert {r.status for r in await chain.engine.submit([second], 5)} == {"committed"}
    finally:
        await chain.engine.stop()
        chain.close()


async def test_a_number_committed_while_cached_is_used(chain: Chain, device: DeviceSim) -> None:
    """The highest number is read while a block is still pending, then moved by it."""
    await chain.acts.register(None, device.certificate, device.segments, 5)
    first, second, third = device.issue(3)
    [pending] = await chain.engine.submit([first], 0)
    assert pending.status.value == "pending"
    reused = resign(device, second, number=parse_document(first).number)
    [refused] = await chain.engine.submit([reused], 5)  # held by the pending overlay
    assert refused.code is not None and refused.code.value == "number_used"
    for _ in range(100):
        if chain.engine.height >= 2:
            break
        await asyncio.sleep(0.01)
    again = resign(device, second, number=parse_document(first).number, counter=2)
    [refused] = await chain.engine.submit([again], 5)  # committed by now
    assert refused.code is not None and refused.code.value == "number_used"
    assert [r.status.value for r in await chain.engine.submit([second, third], 5)] == [
        "committed",
        "committed",
    ]


async def test_codes_without_a_segment_are_not_cached(chain: Chain, device: DeviceSim) -> None:
    """A hostile batch naming many invoice codes grows nothing in the tip state."""
    await chain.acts.register(None, device.certificate, device.segments, 5)
    [doc] = device.issue(1)
    forged = [resign(device, doc, code=f"{i:012d}") for i in range(50)]
    results = await chain.engine.submit(forged, 5)
    assert {r.status.value for r in results} == {"rejected"}
    assert set(chain.engine.state._highest) <= set(chain.engine.state.segments_by_code)
