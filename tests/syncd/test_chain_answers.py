"""syncd's reading of the chain's compact answers: anything inconsistent is a bad answer."""

from __future__ import annotations

import pytest

from syncd.chain_client import blocks_by_height, full_receipt
from syncd.chainport import ChainDown


def test_a_compact_receipt_naming_an_unlisted_block_is_a_bad_answer() -> None:
    compact = {"doc_hash": bytes(32), "position": 0, "proof": [], "height": 7}
    listed = blocks_by_height([{"header": {"height": 6}, "signatures": []}])
    with pytest.raises(ChainDown, match="block 7") as caught:
        full_receipt(compact, listed)
    assert caught.value.code == "BAD_ANSWER"


@pytest.mark.parametrize(
    "blocks",
    ["x", [7], [{"signatures": []}], [{"header": {"height": "7"}, "signatures": []}]],
)
def test_blocks_listed_wrongly_are_a_bad_answer(blocks: object) -> None:
    with pytest.raises(ChainDown, match="block"):
        blocks_by_height(blocks)


def test_a_full_receipt_passes_unchanged() -> None:
    receipt = {"doc_hash": bytes(32), "position": 0, "proof": [], "header": {}, "signatures": []}
    assert full_receipt(receipt, {}) is receipt
