"""A consortium rotation reaches the printer through syncd, endorsed by the old quorum."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from device.protocol import codec, trust
from tests.shop import Shop, http, wait_for


def held_epoch(state: Path) -> int | None:
    """The epoch of the consortium the printer holds (read from its journal)."""
    conn = sqlite3.connect(f"file:{state / 'journal.sqlite'}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'consortium'").fetchone()
    finally:
        conn.close()
    if row is None:
        return None
    raw = codec.decode(row[0])
    return trust.open_consortium(raw, trust.TRAINING_BUREAU.public_key).epoch


def test_a_rotated_consortium_is_taken_with_its_endorsements(shop: Shop) -> None:
    chain = shop.start_chain()
    shop.start_device()
    shop.start_syncd()
    assert shop.issue()[0] == 201
    shop.wait_synced(1)
    assert held_epoch(shop.root / "printer") == 1
    token = Path(chain.ready["admin_token_file"]).read_text().strip()
    status, body, _ = http(
        "POST",
        f"{shop.chain_url}/v1/consortium/rotate",
        b"",
        {"Authorization": f"Bearer {token}"},
    )
    assert status == 201 and body["epoch"] == 2, body
    shop.syncd.stop()  # type: ignore[union-attr]
    shop.start_syncd()  # fetches the consortium afresh: epoch 2, with endorsements
    assert shop.issue()[0] == 201
    shop.wait_synced(2)
    wait_for(lambda: held_epoch(shop.root / "printer") == 2, 10, "the printer at epoch 2")
    assert shop.issue()[0] == 201
    shop.wait_synced(3)


def rotate(shop: Shop, body: dict[str, object] | None = None) -> dict[str, object]:
    status, answer, _ = http(
        "POST", f"{shop.chain_url}/v1/consortium/rotate", body or b"", shop.auditor
    )
    assert status == 201, answer
    return dict(answer)


def test_node_keys_replaced_mid_run_sync_goes_on_without_a_restart(shop: Shop) -> None:
    """The first receipt signed by the new keys is refused by the printer (it holds epoch 1);
    syncd fetches epoch 2 with the old quorum's endorsements, offers it, and goes on."""
    shop.start_chain()
    shop.start_device()
    syncd = shop.start_syncd()
    for _ in range(5):
        assert shop.issue()[0] == 201
    shop.wait_synced(5)
    assert held_epoch(shop.root / "printer") == 1
    answer = rotate(shop, {"replace": ["bureau", "enterprise2"]})
    assert answer["epoch"] == 2 and answer["replaced"] == ["bureau", "enterprise2"]
    for _ in range(5):
        assert shop.issue()[0] == 201
    shop.wait_synced(10)
    assert held_epoch(shop.root / "printer") == 2
    assert syncd.proc.poll() is None  # the same syncd process, never restarted
    answer = rotate(shop, {"replace": "all"})  # and once more, every key this time
    for _ in range(3):
        assert shop.issue()[0] == 201
    assert shop.assert_exactly_once_after_sync() == 13
    assert held_epoch(shop.root / "printer") == 3
    assert shop.device_status()["synced_through"] == 13
