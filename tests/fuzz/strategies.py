"""Hypothesis strategies for hostile input: CBOR and JSON values, bombs, mutated valid bodies.

Random bytes alone rarely get past a decoder, so most inputs start from a
valid body and break one thing in it: a value of the wrong type, a key
removed or added, a semantic tag, a string of invisible characters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cbor2
from hypothesis import strategies as st

# Tags a decoder might act on: dates, bignums, decimals, COSE, shared values, rationals,
# regular expressions, MIME, UUIDs, sets, self-describe.
TAGS = (0, 1, 2, 3, 4, 5, 18, 24, 28, 29, 30, 35, 36, 37, 258, 55799)

NASTY_TEXT = st.sampled_from(
    [
        "\x00" * 300,
        "\x01" * 17_000,  # four bytes each when quoted with repr: past the frame limit
        "\u202e\u2066evil",
        "a\u2028b",
        "\u0301x",
        "\ud800",
        "9" * 5000,
        "x" * 60_000,  # fits a frame; quoted whole in a refusal, it would not
        "",
        " ",
        "茶" * 101,
    ]
)
TEXT = st.one_of(st.text(max_size=30), NASTY_TEXT)
SCALARS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    TEXT,
    st.binary(max_size=40),
    st.booleans(),
    st.none(),
)


def tagged(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.builds(cbor2.CBORTag, st.sampled_from(TAGS), children)


CBOR_VALUES = st.recursive(
    SCALARS | tagged(SCALARS),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.one_of(st.text(max_size=8), st.integers(-3, 3)), children, max_size=4)
        | tagged(children)
    ),
    max_leaves=20,
)

JSON_VALUES = st.recursive(
    st.one_of(
        st.integers(min_value=-(2**70), max_value=2**70),
        st.text(max_size=30),
        st.booleans(),
        st.none(),
    ),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def sharing_bomb(levels: int) -> bytes:
    """CBOR value sharing: each level doubles what a naive walk of the value sees."""
    value: list[Any] = ["x" * 8]
    for _ in range(levels):
        value = [value, value]
    return bytes(cbor2.dumps(value, value_sharing=True))


BOMBS = st.one_of(
    st.integers(min_value=10, max_value=64).map(sharing_bomb),
    st.integers(min_value=17, max_value=5000).map(lambda n: b"\x81" * n + b"\x00"),
    st.just(b"\x9b" + b"\xff" * 8),
    st.just(b"\xbf" * 2000),
)


def dumps(value: Any) -> bytes:
    try:
        return bytes(cbor2.dumps(value))
    except (cbor2.CBOREncodeError, TypeError, ValueError, OverflowError):
        return b"\xf6"


@st.composite
def mutated(draw: st.DrawFn, valid: Mapping[str, Any], values: st.SearchStrategy[Any]) -> Any:
    """`valid` with one thing broken: a value anywhere replaced, a key dropped or added."""
    body: Any = _copy(valid)
    paths = list(_paths(body))
    action = draw(st.sampled_from(("replace", "drop", "add", "whole")))
    if action == "whole" or not paths:
        return draw(values)
    path = draw(st.sampled_from(paths))
    parent: Any = body
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if action == "replace":
        parent[last] = draw(values)
    elif action == "drop" and isinstance(parent, dict):
        del parent[last]
    elif isinstance(parent, dict):
        parent[draw(st.one_of(st.text(max_size=8), NASTY_TEXT))] = draw(values)
    else:
        parent.append(draw(values))
    return body


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, child in items:
        out.append((*prefix, key))
        if isinstance(child, dict | list):
            out.extend(_paths(child, (*prefix, key)))
    return out


def cbor_bodies(valid: Mapping[str, Any]) -> st.SearchStrategy[bytes]:
    """Bodies for a CBOR entry point that expects something like `valid`."""
    return st.one_of(
        mutated(valid, st.one_of(NASTY_TEXT, CBOR_VALUES)).map(dumps),
        CBOR_VALUES.map(dumps),
        BOMBS,
        st.binary(max_size=200),
    )
