"""Trusted time: SET_TIME within bounds, larger steps only from a quorum-signed block time.

The attack: SET_TIME took any future time and the clock never goes back, so
`9999-12-31T23:59:58Z` (or a typo past the certificate's not_after) bricked
the printer: every document it signed after was rejected by the chain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from device.protocol.document import format_utc, parse_utc
from device.protocol.status import DeviceError, Status
from device.settings import DEFAULT_MAX_CLOCK_STEP
from tests.device.conftest import INVOICE, Harness, wide_limits
from tests.helpers import SigningConsortium, run_taxctl

DAY = 86_400


async def refused_time(
    h: Harness, when: str, status: Status = Status.CLOCK_STEP_REFUSED
) -> DeviceError:
    before = (h.fw.now(), h.fw.time_offset, h.fw.journal.meta("time_offset"), h.snapshot())
    with pytest.raises(DeviceError) as err:
        await h.client.set_time(when)
    assert err.value.status == status, err.value.text
    assert (h.fw.now(), h.fw.time_offset, h.fw.journal.meta("time_offset"), h.snapshot()) == before
    return err.value


def not_after(h: Harness) -> int:
    assert h.fw.credentials.cert is not None
    return parse_utc(h.fw.credentials.cert.not_after)


async def test_far_future_and_past_not_after_are_refused(start: Any) -> None:
    h: Harness = await start(limits=wide_limits(), max_clock_step=100 * 365 * DAY)
    # Not a time the device can date documents with at all: refused as a malformed time.
    await refused_time(h, "9999-12-31T23:59:58Z", Status.BAD_REQUEST)
    err = await refused_time(h, format_utc(not_after(h) + 1))
    assert "not_after" in err.detail
    assert (await h.client.set_time(format_utc(not_after(h))))["time"] == format_utc(not_after(h))


async def test_a_step_beyond_the_bound_is_refused(start: Any) -> None:
    h: Harness = await start(limits=wide_limits())
    assert h.fw.settings.max_clock_step == DEFAULT_MAX_CLOCK_STEP == DAY
    now = h.fw.now()
    await refused_time(h, format_utc(now + DAY + 1))
    assert (await h.client.set_time(format_utc(now + DAY)))["time"] == format_utc(now + DAY)
    assert (await h.client.issue(INVOICE))["issued_at"] == format_utc(now + DAY)


async def test_the_bound_is_a_setting_kept_across_restarts(start: Any) -> None:
    h: Harness = await start(limits=wide_limits(), max_clock_step=60)
    await refused_time(h, format_utc(h.fw.now() + 61))
    await h.close()
    h = await start(state=h.state, clock=h.clock, limits=wide_limits())
    assert h.fw.settings.max_clock_step == 60


async def test_ack_sync_moves_the_clock_to_the_block_time(start: Any) -> None:
    h: Harness = await start(limits=wide_limits())
    await h.client.issue(INVOICE)
    ahead = h.fw.now() + 3 * DAY
    chain = SigningConsortium(time=ahead)
    docs = h.fw.journal.documents(1, max_count=10, max_bytes=10**9)
    done = await h.client.ack_sync(chain.receipts(docs, h.fw.settings.device_id), chain.raw)
    assert done["time"] == format_utc(ahead) == format_utc(h.fw.now())
    # The trusted time is kept, and a step is measured from it.
    await h.close()
    h = await start(state=h.state, clock=h.clock, limits=wide_limits())
    assert h.fw.chain_time == ahead and h.fw.now() == ahead
    assert (await h.client.set_time(format_utc(ahead + DAY)))["time"] == format_utc(ahead + DAY)


async def test_ack_sync_never_moves_the_clock_back_or_past_not_after(start: Any) -> None:
    h: Harness = await start(limits=wide_limits())
    await h.client.issue(INVOICE)
    docs = h.fw.journal.documents(1, max_count=10, max_bytes=10**9)
    device_id = h.fw.settings.device_id
    now = h.fw.now()
    behind = SigningConsortium(time=now - DAY)
    done = await h.client.ack_sync(behind.receipts(docs, device_id), behind.raw)
    assert done["time"] == format_utc(now)
    beyond = SigningConsortium(time=not_after(h) + 10 * 365 * DAY)
    beyond.nodes = behind.nodes
    done = await h.client.ack_sync(beyond.receipts(docs, device_id))
    assert done["time"] == format_utc(not_after(h))


def test_the_cli_refuses_a_bound_below_one_second(tmp_path: Path) -> None:
    result = run_taxctl("device", "run", "--state", str(tmp_path / "s"), "--max-clock-step", "0")
    assert result.returncode == 2 and "--max-clock-step" in result.stderr
    assert not (tmp_path / "s").exists()  # nothing personalised
