"""The chain API contract module: receipts composed by the chain, decomposed by syncd."""

from __future__ import annotations

from device.protocol import chainapi
from hostsim.chain.blocks import assemble
from syncd import answers


def block_and_receipts() -> tuple[dict[str, object], dict[str, object], dict[str, object]]:
    hashes = [bytes([i]) * 32 for i in range(1, 4)]
    block = assemble("test-chain", 7, bytes(32), hashes, "2026-01-01T00:00:00Z")
    block.signatures = [{"node_id": "node0", "signature": bytes(64)}]
    full = block.receipt(1, "TC000000000001", 5)
    compact = block.receipt(1, "TC000000000001", 5, compact=True)
    return block.attestation(), full, compact


def test_a_compact_receipt_made_full_is_the_full_receipt_field_for_field() -> None:
    attestation, full, compact = block_and_receipts()
    assert chainapi.is_compact(compact) and not chainapi.is_compact(full)
    assert "header" not in compact and compact["height"] == 7
    assert chainapi.compact_receipt(full) == compact
    rebuilt = chainapi.full_receipt(compact, attestation)
    assert rebuilt == full and list(rebuilt) == list(full)  # the same keys, in order
    assert answers.full_receipt(compact, {7: attestation}) == full


def test_syncd_reads_the_chains_codes_and_statuses_from_the_contract() -> None:
    assert {c.value for c in chainapi.Code} == answers.CHAIN_CODES
    assert {s.value for s in chainapi.ADMITTED | chainapi.UNRESOLVED} == {
        "committed",
        "duplicate",
        "pending",
        "held",
    }
    assert chainapi.UNKNOWN_DEVICE in chainapi.Code and chainapi.UNKNOWN_SEGMENT in chainapi.Code
