"""Every refusal in the SPEC gives its own status and changes nothing."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import pytest

from device.limits import Limits
from device.protocol import trust
from device.protocol.document import format_utc
from device.protocol.keys import KeyPair
from device.protocol.status import DeviceError, Status
from tests.device.conftest import INVOICE, TEA, Harness, wide_limits


async def refused(h: Harness, status: Status, call: Any) -> DeviceError:
    before = h.snapshot()
    with pytest.raises(DeviceError) as err:
        await call
    assert err.value.status == status, err.value.text
    assert h.snapshot() == before, "a refusal changed the device"
    return err.value


async def test_unregistered_device_refuses_then_registers(start: Any) -> None:
    bureau = KeyPair.generate()
    h: Harness = await start(training=False, bureau_key=bureau.public_key, limits=wide_limits())
    await refused(h, Status.UNREGISTERED, h.client.issue(INVOICE))
    csr = await h.client.csr({"name": "Tea House", "tax_id": "91350100M000100Y43"})
    opened = trust.open_csr(csr["csr"])
    assert opened["device_id"] == h.fw.settings.device_id
    assert "seed" not in str(csr) and h.fw.key.seed not in csr["csr"]
    # A certificate from another bureau is refused; the real one is accepted.
    rogue = trust.issue_certificate(KeyPair.generate(), opened, 1, 0, 1)
    await refused(h, Status.CERT_INVALID, h.client.load_cert(rogue))
    cert = trust.issue_certificate(bureau, opened, 7, 0, 1)
    assert (await h.client.load_cert(cert))["serial"] == 7
    assert (await h.client.load_cert(cert))["serial"] == 7  # idempotent
    other = trust.issue_certificate(bureau, opened, 8, 0, 1)
    await refused(h, Status.ALREADY_REGISTERED, h.client.load_cert(other))
    # Registered but no numbers yet.
    await refused(h, Status.SEGMENT_EXHAUSTED, h.client.issue(INVOICE))
    device_id = h.fw.settings.device_id
    seg = trust.issue_segment(bureau, device_id, "144031900111", 1, 2, False, 0)
    await refused(
        h,
        Status.SEGMENT_INVALID,
        h.client.load_segment(
            trust.issue_segment(bureau, "TCAAAAAAAAAAAA", "144031900111", 1, 2, False, 0)
        ),
    )
    assert (await h.client.load_segment(seg))["numbers_left"] == 2
    overlap = trust.issue_segment(bureau, device_id, "144031900111", 2, 9, False, 0)
    await refused(h, Status.SEGMENT_INVALID, h.client.load_segment(overlap))
    first = await h.client.issue(INVOICE)
    second = await h.client.issue(INVOICE)
    assert (first["number"], second["number"]) == ("00000001", "00000002")
    assert first["training"] is False
    await refused(h, Status.SEGMENT_EXHAUSTED, h.client.issue(INVOICE))
    status = await h.client.status()
    assert "SEGMENT_EXHAUSTED" in status["blocking"] and not status["can_issue"]


async def test_training_device_refuses_csr(start: Any) -> None:
    h: Harness = await start()
    await refused(
        h, Status.TRAINING_MODE, h.client.csr({"name": "x", "tax_id": "91350100M000100Y43"})
    )


async def test_paper_out_and_cover_open(start: Any) -> None:
    h: Harness = await start(limits=wide_limits())
    await h.client.issue(INVOICE)
    await h.client.control(paper_out=True)
    await refused(h, Status.PAPER_OUT, h.client.issue(INVOICE))
    await refused(h, Status.PAPER_OUT, h.client.x_report())
    await h.client.control(paper_out=False, cover_open=True)
    await refused(h, Status.COVER_OPEN, h.client.issue(INVOICE))
    await h.client.control(cover_open=False)
    assert (await h.client.issue(INVOICE))["counter"] == 2


async def test_clock_backwards(start: Any) -> None:
    h: Harness = await start(limits=wide_limits())
    await h.client.issue(INVOICE)
    h.clock.advance(-3600)  # the host's clock jumped back an hour
    await refused(h, Status.CLOCK_BACKWARDS, h.client.issue(INVOICE))
    assert "CLOCK_BACKWARDS" in (await h.client.status())["blocking"]
    h.clock.advance(3600)
    await h.client.issue(INVOICE)
    await refused(h, Status.CLOCK_BACKWARDS, h.client.set_time(format_utc(h.clock.now() - 10)))
    ahead = format_utc(h.clock.now() + 7200)
    assert (await h.client.set_time(ahead))["time"] == ahead
    assert (await h.client.issue(INVOICE))["issued_at"] == ahead


async def test_configured_capacity_full(start: Any) -> None:
    h: Harness = await start(limits=wide_limits(), capacity=2)
    await h.client.issue(INVOICE)
    await h.client.issue(INVOICE)
    await refused(h, Status.STORAGE_FULL, h.client.issue(INVOICE))


async def test_real_disk_full_refuses_and_rolls_back(start: Any) -> None:
    h: Harness = await start(limits=wide_limits())
    await h.client.issue(INVOICE)
    pages = h.fw.journal._write.execute("PRAGMA page_count").fetchone()[0]
    # The journal cannot grow by a single page any more: SQLite says "database or disk is full".
    h.fw.journal._write.execute(f"PRAGMA max_page_count = {pages}")
    big = {"items": [dict(TEA, name="x" * 100)] * 100}
    for _ in range(3):
        await refused(h, Status.STORAGE_FULL, h.client.issue(big))
    h.fw.journal._write.execute("PRAGMA max_page_count = 1073741823")
    after = await h.client.issue(INVOICE)
    assert after["counter"] == 2  # nothing was consumed by the failed commits
    assert after["number"] == "00000002"


async def test_a_full_disk_shows_in_status_until_a_write_succeeds(start: Any) -> None:
    """A printer on a full disk refused every sale with STORAGE_FULL while STATUS said
    `can_issue` true with nothing in `blocking`: the refusal must show where syncd and
    the operator look."""
    h: Harness = await start(limits=wide_limits())
    await h.client.issue(INVOICE)
    assert (await h.client.status())["blocking"] == []
    pages = h.fw.journal._write.execute("PRAGMA page_count").fetchone()[0]
    h.fw.journal._write.execute(f"PRAGMA max_page_count = {pages}")
    await refused(h, Status.STORAGE_FULL, h.client.issue({"items": [TEA] * 100}))
    status = await h.client.status()
    assert status["blocking"] == [Status.STORAGE_FULL.name]
    assert status["can_issue"] is False
    h.fw.journal._write.execute("PRAGMA max_page_count = 1073741823")
    await h.client.issue(INVOICE)
    status = await h.client.status()
    assert (status["blocking"], status["can_issue"]) == ([], True)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"items": []}, Status.TOO_MANY_ITEMS),
        ({"items": [dict(TEA, tax_rate_bp=1700)]}, Status.UNKNOWN_TAX_RATE),
        ({"items": [dict(TEA, unit_price=-1)]}, Status.NEGATIVE_AMOUNT),
        ({"items": [dict(TEA, quantity="-1")]}, Status.NEGATIVE_AMOUNT),
        ({"items": [dict(TEA, name="n" * 101)]}, Status.FIELD_TOO_LONG),
        ({"items": [dict(TEA, quantity="1.0001")]}, Status.BAD_QUANTITY),
        (
            {"buyer": {"name": "B", "tax_id": "91350100M000100Y44"}, "items": [TEA]},
            Status.INVALID_TAX_ID,
        ),
        ({"items": [TEA], "total": 1}, Status.INVALID_INVOICE),
        ({"items": [dict(TEA, unit_price=10**11)]}, Status.AMOUNT_TOO_LARGE),
    ],
)
async def test_invalid_requests(start: Any, body: dict[str, Any], status: Status) -> None:
    h: Harness = await start(limits=wide_limits())
    await h.client.issue(INVOICE)
    await refused(h, status, h.client.issue(body))


async def test_malformed_bodies_and_unknown_commands(start: Any) -> None:
    from device.protocol.commands import Command

    h: Harness = await start()
    await refused(h, Status.BAD_REQUEST, h.client.request(Command.FETCH, {"from": "x"}))
    await refused(h, Status.BAD_REQUEST, h.client.request(Command.STATUS, {"bogus": 1}))
    await refused(h, Status.UNKNOWN_COMMAND, h.client.request(0x7E, {}))  # type: ignore[arg-type]
    await refused(h, Status.BAD_REQUEST, h.client.request(Command.ACK_SYNC, {"receipts": "no"}))
    await refused(h, Status.UNSUPPORTED_VERSION, h.client.request(Command.HELLO, {"versions": [9]}))


async def test_credit_note_rules(start: Any) -> None:
    h: Harness = await start(limits=wide_limits())
    original = await h.client.issue(INVOICE)
    ref = {"code": original["code"], "number": original["number"]}
    await refused(
        h,
        Status.CREDIT_UNKNOWN_ORIGINAL,
        h.client.credit({"refers_to": {"code": ref["code"], "number": "00099999"}, "reason": "x"}),
    )
    too_much = {"refers_to": ref, "reason": "returned", "items": [dict(TEA, quantity="3")]}
    await refused(h, Status.CREDIT_EXCEEDS_ORIGINAL, h.client.credit(too_much))
    partial = await h.client.credit(
        {"refers_to": ref, "reason": "one tea back", "items": [dict(TEA, quantity="1")]}
    )
    assert partial["kind"] == "credit" and partial["total"] == -(1250 + 163)
    await refused(
        h,
        Status.CREDIT_EXCEEDS_ORIGINAL,
        h.client.credit({"refers_to": ref, "reason": "all of it"}),
    )
    credit_ref = {"code": partial["code"], "number": partial["number"]}
    await refused(
        h, Status.CREDIT_NOT_AN_INVOICE, h.client.credit({"refers_to": credit_ref, "reason": "x"})
    )
    fresh = await h.client.issue(INVOICE)
    full = await h.client.credit(
        {"refers_to": {"code": fresh["code"], "number": fresh["number"]}, "reason": "cancelled"}
    )
    assert full["total"] == -fresh["total"]


async def test_offline_limits_at_the_exact_boundary(start: Any) -> None:
    total = 2 * 1250 + 325 + 800 + 72  # the INVOICE total, in fen
    h: Harness = await start(limits=Limits(offline_seconds=3600, offline_amount=3 * total))
    first = await h.client.issue(INVOICE)
    assert first["total"] == total
    await h.client.issue(INVOICE)
    await h.client.issue(INVOICE)  # exactly at the amount limit: allowed
    await refused(h, Status.OFFLINE_AMOUNT_LIMIT, h.client.issue(INVOICE))
    assert (await h.client.status())["flags"]["offline_amount_exceeded"]
    # Reports are still allowed: a locked shop can close its day.
    await h.client.z_report()


async def test_offline_time_limit_at_the_exact_boundary(start: Any) -> None:
    h: Harness = await start(limits=Limits(offline_seconds=3600, offline_amount=10**12))
    await h.client.issue(INVOICE)
    h.clock.advance(3600)
    await h.client.issue(INVOICE)  # exactly the limit since the oldest unsynced: allowed
    h.clock.advance(1)
    await refused(h, Status.OFFLINE_TIME_LIMIT, h.client.issue(INVOICE))
    status = await h.client.status()
    assert status["flags"]["offline_time_exceeded"] and "OFFLINE_TIME_LIMIT" in status["blocking"]


async def test_signals_toggle_paper_and_cover(tmp_path: Any) -> None:
    from tests.helpers import spawn

    proc = spawn(
        [
            "device",
            "run",
            "--state",
            str(tmp_path / "s"),
            "--link",
            str(tmp_path / "tty"),
            "--training",
        ]
    )
    try:
        from device.client import DeviceClient

        client = await DeviceClient.open(str(tmp_path / "tty"))
        try:
            os.kill(proc.proc.pid, signal.SIGUSR1)
            await _until(client, lambda s: s["flags"]["paper_out"])
            with pytest.raises(DeviceError) as err:
                await client.issue(INVOICE)
            assert err.value.status == Status.PAPER_OUT
            os.kill(proc.proc.pid, signal.SIGUSR1)
            os.kill(proc.proc.pid, signal.SIGUSR2)
            await _until(client, lambda s: s["flags"]["cover_open"] and not s["flags"]["paper_out"])
        finally:
            await client.close()
    finally:
        assert proc.stop() == 0


async def _until(client: Any, predicate: Any, attempts: int = 100) -> None:
    import asyncio

    for _ in range(attempts):
        if predicate(await client.status()):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


def test_one_process_per_state_directory(tmp_path: Any) -> None:
    from device.app import open_device
    from device.settings import SettingsError
    from device.statelock import StateInUse

    state = tmp_path / "state"
    fw = open_device(state, training=True)
    held = rf"in use by another device process \(pid {os.getpid()}\)"
    with pytest.raises(StateInUse, match=held):
        open_device(state, training=True)
    fw.close()
    again = open_device(state, training=True)  # closed: free again
    again.close()
    # A start that fails on the way (wrong bureau key) does not keep the state locked.
    with pytest.raises(SettingsError, match="different tax bureau key"):
        open_device(state, bureau_key=bytes(32))
    open_device(state, training=True).close()


DEEP_JSON = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    ("what", "change"),
    [
        ("capacity of Infinity", '"capacity": Infinity'),
        ("offline_amount of NaN", '"offline_amount": NaN'),
        ("training as text", '"training": "false"'),
        ("device_id as a list", '"device_id": [1]'),
        ("capacity as a fraction", '"capacity": 2.5'),
        ("tax rates as a map", '"tax_rates": {"a": 1}'),
        ("the file nested 100,000 deep", None),
    ],
)
def test_a_damaged_device_json_is_one_settings_error(
    tmp_path: Any, what: str, change: str | None
) -> None:
    """device.json was read with json.loads and int()/bool()/str(): Infinity raised
    OverflowError and deep nesting RecursionError (tracebacks at start), and a training
    flag of "false" or a device id of [1] were taken as True and "[1]"."""
    from device.app import open_device
    from device.settings import SETTINGS_FILE, SettingsError

    state = tmp_path / "state"
    open_device(state, training=True).close()
    path = state / SETTINGS_FILE
    text = path.read_text()
    if change is None:
        text = DEEP_JSON
    else:
        key = change.split(":")[0].strip('"')
        data = json.loads(text)
        data.pop(key)
        text = json.dumps(data)[:-1] + ", " + change + "}"
    path.write_text(text)
    with pytest.raises(SettingsError) as err:
        open_device(state, training=True).close()
    assert len(str(err.value)) < 300, what
    assert "\n" not in str(err.value), what


@pytest.mark.parametrize("when", ["9999-12-31T23:59:59Z", "9999-06-01T00:00:00Z"])
async def test_set_time_to_the_end_of_four_digit_years_is_refused(start: Any, when: str) -> None:
    """SET_TIME took any valid time: at 9999-12-31T23:59:59Z, a second later the device
    signed documents dated 10000-01-01 (a form no verifier reads), and since its clock can
    never be set back, it stayed so for good."""
    h: Harness = await start(limits=wide_limits())
    await h.client.issue(INVOICE)
    offset = h.fw.time_offset
    error = await refused(h, Status.BAD_REQUEST, h.client.set_time(when))
    assert "9999" in error.detail
    assert h.fw.time_offset == offset
    h.clock.advance(86400)
    assert (await h.client.issue(INVOICE))["issued_at"].startswith("20")
