"""IdempotencyStore: one key, one device request, kept across restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncd.idempotency import BadKey, IdempotencyStore, KeyReused, check_key

BODY = {"items": [{"name": "Tea"}]}


def claim(store: IdempotencyStore, key: str = "k1", **kw: object) -> object:
    args: dict[str, object] = {
        "route": "invoices",
        "device_id": "TC000000000001",
        "command": 3,
        "body": BODY,
        "request_id": 1 << 63 | 7,  # all 64 bits are used
    }
    args.update(kw)
    return store.claim(key, **args)  # type: ignore[arg-type]


def test_a_retry_gets_the_first_request_id_back_even_after_a_restart(tmp_path: Path) -> None:
    store = IdempotencyStore(tmp_path)
    first = claim(store)
    assert first.fresh  # type: ignore[attr-defined]
    store.complete("k1", 12)
    store.close()
    store = IdempotencyStore(tmp_path)
    again = claim(store, request_id=99)
    assert not again.fresh and again.request_id == 1 << 63 | 7  # type: ignore[attr-defined]
    found = store.find("k1")
    assert found is not None and found.counter == 12 and found.body == BODY
    store.close()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"route": "credit-notes"}, "another operation"),
        ({"body": {"items": []}}, "different body"),
        ({"device_id": "TC000000000002"}, "another device"),
    ],
)
def test_a_key_reused_for_something_else_is_refused(
    tmp_path: Path, change: dict[str, object], reason: str
) -> None:
    store = IdempotencyStore(tmp_path)
    claim(store)
    with pytest.raises(KeyReused, match=reason):
        claim(store, **change)
    store.close()


def test_a_retry_without_a_device_goes_to_the_first_device(tmp_path: Path) -> None:
    store = IdempotencyStore(tmp_path)
    claim(store)
    again = claim(store, device_id="TC000000000002", device_chosen=False)
    assert again.device_id == "TC000000000001"  # type: ignore[attr-defined]
    store.close()


def test_a_released_key_is_a_new_attempt_but_not_once_it_issued(tmp_path: Path) -> None:
    store = IdempotencyStore(tmp_path)
    claim(store)
    store.release("k1", 1 << 63 | 7)
    assert store.find("k1") is None and store.count() == 0
    claim(store, "k2")
    store.complete("k2", 3)
    store.release("k2", 1 << 63 | 7)  # it issued a document: kept
    assert store.find("k2") is not None
    assert store.purge(now=10**12) == 1 and store.count() == 0
    store.close()


def test_keys_are_bounded_printable_text() -> None:
    assert check_key("sale-1") == "sale-1"
    for bad in ("", "x" * 1000, "tab\there"):
        with pytest.raises(BadKey):
            check_key(bad)
