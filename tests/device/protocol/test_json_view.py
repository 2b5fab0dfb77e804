"""json_view, which no longer calls itself for a map's plain values, gives what it gave."""

from __future__ import annotations

import random
from collections import OrderedDict
from typing import Any

from device.protocol import codec
from tests.device.protocol.test_codec_one_pass import payloads, random_value


def old_json_view(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): old_json_view(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [old_json_view(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value


class Text(str):
    pass


class Number(int):
    pass


def test_json_view_as_before() -> None:
    rnd = random.Random(3)
    values: list[Any] = [codec.decode_canonical(p) for p in payloads()]
    values += [random_value(rnd) for _ in range(200)]
    values += [
        {1: b"\x00", (1, 2): [b"ab", (b"c",)], None: 1.5, "f": float("nan")},
        {"t": Text("x"), "n": Number(3), "o": OrderedDict(a=b"\x01"), "b": bytearray(b"z")},
        [True, None, 0, -1, "贸", {"k": {"k": {"k": b""}}}],
        (b"tuple",),
        b"top",
        "top",
    ]
    for value in values:
        new, old = codec.json_view(value), old_json_view(value)
        assert repr(new) == repr(old)
        assert type(new) is type(old)
