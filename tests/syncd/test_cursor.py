"""syncd's cursor file: whatever it holds, syncd starts (the device has the truth).

The file is syncd's own, but a disk, an editor or another program can leave
anything in it. It used to be read with json.loads and int()/float()/str() of
whatever was there: a `devices` that was a list, an entry that was not a map
(AttributeError), a counter of Infinity (OverflowError) or nesting deeper than
the interpreter's stack (RecursionError) stopped syncd at every start, and a
NaN time made a rejected document never due again.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from syncd.cursor import CURSOR_FILE, CursorStore

GOOD: dict[str, Any] = {
    "counter": 7,
    "synced_through": 5,
    "port": "/dev/ttyUSB0",
    "rejected": [
        {
            "counter": 6,
            "code": "BAD_TOTALS",
            "message": "m",
            "attempts": 2,
            "first_at": 1.5,
            "last_at": 2.5,
        }
    ],
}
DEVICE = "TC0000000000AB"
OTHER = "TC0000000000CD"


def damaged_rejection(**fields: object) -> dict[str, object]:
    return {**GOOD, "rejected": [{**GOOD["rejected"][0], **fields}]}


@pytest.mark.parametrize(
    ("what", "text"),
    [
        ("devices as a list", '{"version": 1, "devices": [1, 2]}'),
        ("an entry that is a list", '{"version": 1, "devices": {"' + OTHER + '": [1]}}'),
        ("rejected as a map", json.dumps({"version": 1, "devices": {OTHER: {"rejected": {}}}})),
        (
            "a rejection that is text",
            json.dumps({"version": 1, "devices": {OTHER: {"rejected": ["x"]}}}),
        ),
        (
            "a counter of Infinity",
            '{"version": 1, "devices": {"' + OTHER + '": {"counter": Infinity}}}',
        ),
        (
            "a time of NaN",
            json.dumps({"version": 1, "devices": {OTHER: damaged_rejection(last_at=math.nan)}}),
        ),
        (
            "a counter that is a float",
            json.dumps({"version": 1, "devices": {OTHER: {"counter": 1.5}}}),
        ),
        (
            "a code that is a map",
            json.dumps({"version": 1, "devices": {OTHER: damaged_rejection(code={"a": 1})}}),
        ),
        ("nesting 100,000 deep", "[" * 100_000 + "]" * 100_000),
        ("a device id that is not one", json.dumps({"version": 1, "devices": {"x" * 5000: GOOD}})),
    ],
    ids=lambda value: value if len(value) < 40 else "",
)
def test_a_damaged_cursor_file_never_stops_syncd(tmp_path: Path, what: str, text: str) -> None:
    (tmp_path / CURSOR_FILE).write_text(text)
    store = CursorStore(tmp_path)  # never raises
    assert OTHER not in store.devices, what
    assert all(len(d) == 14 for d in store.devices), what
    for cursor in store.devices.values():
        for rejection in cursor.rejected.values():
            assert math.isfinite(rejection.last_at) and math.isfinite(rejection.first_at)


def test_a_damaged_entry_costs_only_that_device(tmp_path: Path) -> None:
    text = json.dumps(
        {"version": 1, "devices": {DEVICE: GOOD, OTHER: damaged_rejection(attempts="two")}}
    )
    (tmp_path / CURSOR_FILE).write_text(text)
    store = CursorStore(tmp_path)
    assert set(store.devices) == {DEVICE}
    # (later fields, such as the rollback marks, come back at their defaults)
    assert GOOD.items() <= store.devices[DEVICE].to_json().items()
    store.save()
    assert GOOD.items() <= CursorStore(tmp_path).devices[DEVICE].to_json().items()
