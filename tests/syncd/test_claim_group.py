"""Idempotency claims made together share one durable transaction (group commit), and each
still gets the answer it would have got alone."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from syncd.idempotency import ClaimRequest, IdempotencyStore, KeyReused

BODY: dict[str, Any] = {
    "items": [{"name": "Tea", "quantity": "1", "unit_price": 100, "tax_rate_bp": 1300}]
}


def asked(key: str, request_id: int, body: dict[str, Any] = BODY) -> ClaimRequest:
    return ClaimRequest(key, "issue", "TC1", 0x10, dict(body), request_id)


async def test_claims_in_flight_together_share_one_transaction(tmp_path: Path) -> None:
    store = IdempotencyStore(tmp_path)
    batches: list[int] = []
    claim_many = store.claim_many

    def counted(requests: list[ClaimRequest], completes: Any = ()) -> list[object]:
        batches.append(len(requests))
        return claim_many(requests, completes)  # type: ignore[return-value]

    store.claim_many = counted  # type: ignore[assignment,method-assign]
    try:
        claims = await asyncio.gather(*(store.group.claim(asked(f"k{n}", n)) for n in range(16)))
        assert [c.request_id for c in claims] == list(range(16)) and all(c.fresh for c in claims)
        assert sum(batches) == 16 and len(batches) <= 2, batches  # not one fsync each
        # durable: a store opened afresh answers a retry with the first request id
        again = IdempotencyStore(tmp_path).claim(
            "k3", route="issue", device_id="TC1", command=0x10, body=dict(BODY), request_id=99
        )
        assert (again.request_id, again.fresh) == (3, False)
    finally:
        store.close()


async def test_in_one_batch_a_repeated_key_is_a_retry_and_a_reused_one_is_refused(
    tmp_path: Path,
) -> None:
    store = IdempotencyStore(tmp_path)
    try:
        other: dict[str, Any] = {"items": []}
        first, retry, reused = await asyncio.gather(
            store.group.claim(asked("same", 1)),
            store.group.claim(asked("same", 2)),
            store.group.claim(asked("same", 3, other)),
            return_exceptions=True,
        )
        assert not isinstance(first, BaseException) and first.fresh and first.request_id == 1
        assert not isinstance(retry, BaseException)
        assert (retry.fresh, retry.request_id) == (False, 1)
        assert isinstance(reused, KeyReused) and "different body" in reused.reason
    finally:
        store.close()


def test_the_one_claim_api_is_unchanged(tmp_path: Path) -> None:
    store = IdempotencyStore(tmp_path)
    try:
        kw = {"route": "issue", "device_id": "TC1", "command": 0x10, "request_id": 7}
        assert store.claim("a", body=dict(BODY), **kw).fresh  # type: ignore[arg-type]
        with pytest.raises(KeyReused):
            store.claim("a", body={"items": []}, **kw)  # type: ignore[arg-type]
        store.complete("a", 12)
        found = store.find("a")
        assert found is not None and found.counter == 12
    finally:
        store.close()


async def test_a_counter_note_goes_with_the_next_batch(tmp_path: Path) -> None:
    store = IdempotencyStore(tmp_path)
    try:
        await store.group.claim(asked("n1", 1))
        store.group.complete("n1", 41)  # alone: a batch of its own, not fsynced on its own
        await store.group.claim(asked("n2", 2))  # rides behind it, or carries it
        for _ in range(100):
            found = store.find("n1")
            if found is not None and found.counter == 41:
                break
            await asyncio.sleep(0.01)
        assert found is not None and found.counter == 41
        retry = await store.group.claim(asked("n1", 9))
        assert (retry.fresh, retry.request_id, retry.counter) == (False, 1, 41)
    finally:
        store.close()
