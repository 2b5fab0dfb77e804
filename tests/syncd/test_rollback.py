"""A printer that went backwards issues nothing, through syncd too.

The attack: after kill -9 and a deleted `journal.sqlite-wal` (or an older
copy of the state restored) the printer issued counter 1 and invoice number
00000001 again, with other content; syncd knew it had been at counter 20,
only logged it, and the POS kept getting 201s.
"""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

from syncd.cursor import CursorStore
from tests.helpers import export_documents
from tests.shop import Shop, http, kill9, wait_for


def issue(shop: Shop, count: int) -> list[dict[str, object]]:
    wait_for(lambda: shop.device_status()["state"] == "online", 15, "printer online")
    out = []
    for _ in range(count):
        status, body = shop.issue()
        assert status == 201, body
        out.append(body)
    return out


def refused(shop: Shop) -> dict[str, object]:
    """The POS is refused once the printer is back online, and nothing is issued."""

    def answer() -> tuple[int, dict[str, object]] | None:
        status, body = shop.issue()
        return None if status == 503 else (status, body)  # syncd still reconnecting

    status, body = wait_for(answer, 15, "an answer from the printer")
    assert status == 409, body
    return body


def metric(shop: Shop, name: str, device_id: str) -> str | None:
    _, text, _ = http("GET", f"{shop.api}/metrics")
    for line in str(text).splitlines():
        if line.startswith(f'{name}{{device="{device_id}"}}'):
            return format(float(line.rsplit(" ", 1)[1]), "g")  # "1.0" and "1" are one value
    return None


def test_a_lost_wal_after_kill9_issues_nothing(shop: Shop) -> None:
    shop.start_chain()
    shop.start_device()
    shop.start_syncd()
    numbers = {b["number"] for b in issue(shop, 20)}
    device_id = shop.devices["printer"].ready["device_id"]
    kill9(shop.devices["printer"])
    (shop.root / "printer" / "journal.sqlite-wal").unlink()
    shop.start_device()
    kept = export_documents(shop.root / "printer")
    assert len(kept) < 20  # the WAL held the tail of the journal
    # syncd saw counter 20: the POS gets 409, not 201.
    assert refused(shop)["error"] == "DEVICE_ROLLED_BACK"
    assert metric(shop, "taxctl_syncd_device_rolled_back", device_id) == "1"
    assert "CRITICAL" in (shop.root / "syncd.log").read_text()
    # The printer refuses by itself too: a syncd without its memory still gets 409.
    shop.syncd.stop()  # type: ignore[union-attr]
    (shop.root / "syncd" / "cursor.json").unlink()
    shop.start_syncd()
    assert "JOURNAL_ROLLED_BACK" in shop.device_status()["blocking"]
    assert refused(shop)["error"] == "JOURNAL_ROLLED_BACK"
    after = export_documents(shop.root / "printer")
    assert after == kept  # nothing issued: no counter and no number used a second time
    assert {d["number"] for d in after} <= numbers


def test_an_older_state_restored_with_its_anchor_is_caught_by_syncd(shop: Shop) -> None:
    shop.start_chain()
    shop.start_device()
    shop.start_syncd()
    issue(shop, 2)
    device_id = shop.devices["printer"].ready["device_id"]
    shop.devices["printer"].stop()
    saved = shop.root / "saved"
    shutil.copytree(shop.root / "printer", saved)  # journal, anchor, key: the whole state
    shop.start_device()
    issue(shop, 3)
    shop.wait_synced(5)
    shop.devices["printer"].stop()
    shutil.rmtree(shop.root / "printer")
    shutil.copytree(saved, shop.root / "printer")
    shop.start_device()
    # The anchor matches the journal it was restored with: only syncd's memory tells.
    body = refused(shop)
    assert body["error"] == "DEVICE_ROLLED_BACK" and "counter 5" in str(body["detail"])
    assert len(export_documents(shop.root / "printer")) == 2
    assert metric(shop, "taxctl_syncd_device_rolled_back", device_id) == "1"
    # syncd's memory is persisted: a restarted syncd refuses the same way.
    shop.syncd.stop()  # type: ignore[union-attr]
    shop.start_syncd()
    assert refused(shop)["error"] == "DEVICE_ROLLED_BACK"
    assert len(export_documents(shop.root / "printer")) == 2


def test_the_chain_catches_what_a_syncd_without_memory_let_through(shop: Shop) -> None:
    """Older state restored with its anchor, and syncd's state lost too: the printer signs
    counter 3 a second time; the chain calls it an equivocation and syncd stops issuing."""
    shop.start_chain()
    shop.start_device()
    shop.start_syncd()
    issue(shop, 2)
    device_id = shop.devices["printer"].ready["device_id"]
    shop.devices["printer"].stop()
    saved = shop.root / "saved"
    shutil.copytree(shop.root / "printer", saved)
    shop.start_device()
    issue(shop, 3)
    shop.wait_synced(5)
    shop.syncd.stop()  # type: ignore[union-attr]
    shop.devices["printer"].stop()
    shutil.rmtree(shop.root / "printer")
    shutil.copytree(saved, shop.root / "printer")
    (shop.root / "syncd" / "cursor.json").unlink()
    shop.start_device()
    shop.start_syncd()
    issue(shop, 1)  # counter 3 again, other content: nothing can tell yet
    wait_for(
        lambda: metric(shop, "taxctl_syncd_device_equivocated", device_id) == "1",
        30,
        "the chain's equivocation verdict",
    )
    assert refused(shop)["error"] == "DEVICE_EQUIVOCATED"
    assert len(export_documents(shop.root / "printer")) == 3


def test_the_marks_survive_a_restart_owner_only(tmp_path: Path) -> None:
    cursors = CursorStore(tmp_path)
    cursors.device("TCMARKS0000001").high_counter = 20
    cursors.device("TCMARKS0000001").high_synced = 7
    cursors.save()
    assert stat.S_IMODE((tmp_path / "cursor.json").stat().st_mode) == 0o600
    again = CursorStore(tmp_path).device("TCMARKS0000001")
    assert (again.high_counter, again.high_synced) == (20, 7)
