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
