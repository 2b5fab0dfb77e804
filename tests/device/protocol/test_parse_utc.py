"""parse_utc, reading the regular expression's groups, gives what slicing the text gave:
the same seconds, or the same refusal."""

from __future__ import annotations

import datetime
import random
import re
from collections.abc import Callable

import pytest

from device.protocol import document
from device.protocol.untrusted import shown


def old_parse_utc(text: object) -> int:
    if not isinstance(text, str) or not re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", text, re.ASCII
    ):
        raise ValueError(f"not a UTC time of the form YYYY-MM-DDTHH:MM:SSZ: {shown(text)}")
    try:
        when = datetime.datetime(
            int(text[0:4]),
            int(text[5:7]),
            int(text[8:10]),
            int(text[11:13]),
            int(text[14:16]),
            int(text[17:19]),
        )
    except ValueError as exc:
        raise ValueError(f"not a valid time: {text} ({exc})") from None
    return (when - datetime.datetime(1970, 1, 1)) // datetime.timedelta(seconds=1)


def outcome(parse: Callable[[object], int], text: object) -> object:
    try:
        return parse(text)
    except ValueError as exc:
        return str(exc)


def texts() -> list[object]:
    rnd = random.Random(2)
    out: list[object] = [
        "2026-11-25T08:00:00Z",
        "1970-01-01T00:00:00Z",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "0000-01-01T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-02-29T00:00:00Z",
        "2028-02-29T00:00:00Z",
        "2026-01-01T24:00:00Z",
        "2026-01-01T00:60:00Z",
        "2026-01-01T00:00:60Z",
        "2026-01-01T00:00:00",
        "2026-01-01 00:00:00Z",
        "2026-01-01T00:00:00Z\n",
        "\u0662\u0660\u0663\u0660-01-01T00:00:00Z",
        "",
        None,
        20260101,
        b"2026-01-01T00:00:00Z",
        "x" * 10_000,
    ]
    for _ in range(300):
        out.append(
            f"{rnd.randrange(10000):04d}-{rnd.randrange(15):02d}-{rnd.randrange(33):02d}T"
            f"{rnd.randrange(26):02d}:{rnd.randrange(62):02d}:{rnd.randrange(62):02d}Z"
        )
    return out


@pytest.mark.parametrize("text", texts())
def test_parse_utc_as_before(text: object) -> None:
    assert outcome(document.parse_utc, text) == outcome(old_parse_utc, text)
