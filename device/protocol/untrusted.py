"""One policy for every byte that comes from outside: CBOR and JSON decoded with bounds.

Every untrusted input (device frames, chain API bodies, chain answers in
syncd, POS JSON) is decoded through here. CBOR is walked head by head
*before* cbor2 builds a value, because the dangerous part of CBOR is what
a decoder does with semantic tags: value sharing (tags 28/29) turns a few
hundred bytes into a value whose re-encoding or `repr` is exponential in
the input ("billion laughs"); a regular expression tag compiles a pattern;
a decimal or bignum tag makes numbers whose printing never ends. So a tag
is refused unless the field it sits in is defined with it (COSE_Sign1's
18), and depth, item count and map key types are bounded, all from the
bytes, in time linear in their length and with no value built.

JSON cannot share values, so it is parsed first (refusing NaN and
Infinity, which are not JSON) and the value walked with the same bounds.

`shown` is the other half of the policy: a refusal message quotes a
hostile value only shortened, with control and format characters escaped,
so no answer can grow past its frame or forge a line on a screen.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, replace
from typing import Any

__all__ = [
    "CBOR_BODY",
    "CHAIN_ANSWER",
    "COSE",
    "JSON_BODY",
    "InputRefused",
    "Limits",
    "check_cbor",
    "check_value",
    "loads_json",
    "shown",
    "shown_keys",
]


class InputRefused(ValueError):
    """Input outside the decoding policy; the message says which bound, never the input."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What an entry point accepts. Bounded in depth and item count, so time and
    memory follow the byte count however the items are arranged."""

    max_depth: int = 16
    max_items: int = 20_000  # every data item, keys and values, at any depth
    tags: frozenset[int] = frozenset()
    int_keys: bool = False  # map keys are text only unless the format defines integers
    floats: bool = False  # never in this project's CBOR; NaN is not JSON

    def allowing(self, **changes: Any) -> Limits:
        return replace(self, **changes)


CBOR_BODY = Limits()  # a request or answer body: maps with text keys, no tags
# A chain's answer to a submission of up to 1000 documents: about 60 items each with full
# receipts. The bound keeps a hostile answer's decoded value to tens of megabytes.
CHAIN_ANSWER = Limits(max_items=500_000)
COSE = Limits(tags=frozenset({18}), int_keys=True, max_items=64)  # COSE_Sign1: tag 18, labels
JSON_BODY = Limits()

_TEXT_KEY, _INT_KEY = 1, 2
_BREAK = 0xFF


# Each initial byte's meaning, looked up once instead of decoded per item:
# (kind, argument) where a non-negative argument is the value itself, -n means "in
# the next n bytes" and _INDEFINITE an indefinite length.
_INT, _BYTES, _TEXT, _ARRAY, _MAP, _TAG, _SIMPLE, _FLOAT, _OTHER_SIMPLE, _RESERVED, _STOP = range(
    11
)
_INDEFINITE = -16


def _head(initial: int) -> tuple[int, int]:
    major, info = initial >> 5, initial & 0x1F
    if initial == _BREAK:
        return _STOP, 0
    if major == 7:
        if 25 <= info <= 27:
            return _FLOAT, 0
        if 20 <= info <= 22:
            return _SIMPLE, 0
        return (_OTHER_SIMPLE, 0) if info <= 24 else (_RESERVED, 0)
    kind = (_INT, _INT, _BYTES, _TEXT, _ARRAY, _MAP, _TAG)[major]
    if info < 24:
        return kind, info
    if info < 28:
        return kind, -(1 << (info - 24))
    if info == 31 and kind in (_BYTES, _TEXT, _ARRAY, _MAP):
        return kind, _INDEFINITE
    return _RESERVED, 0


_HEADS = tuple(_head(b) for b in range(256))


def check_cbor(data: bytes, limits: Limits = CBOR_BODY) -> None:
    """Refuse `data` unless it starts with one CBOR item within `limits`; build nothing.

    Checks only what could make decoding, or what follows it, costly or
    ambiguous; trailing bytes and exact encodings stay with the decoder and
    its caller. Raises InputRefused; returns nothing.
    """
    # One loop on purpose: it runs once per item of every document the chain receives,
    # and a call per item would cost more than the rest of the walk.
    end = len(data)
    pos = 0
    items = 0
    # Open containers, innermost last, each one int: entries left << 1 | is a map. A map
    # of n pairs has 2n entries, so a key is due when a map's count is even; an
    # indefinite container counts down from _OPEN, which no input can exhaust.
    stack: list[int] = []
    max_items, max_depth = limits.max_items, limits.max_depth
    key_kinds = (_TEXT, _INT) if limits.int_keys else (_TEXT,)
    heads = _HEADS
    while True:
        if pos >= end:
            raise InputRefused("CBOR ends inside an item")
        kind, arg = heads[data[pos]]
        pos += 1
        if kind == _STOP:
            if not stack or stack[-1] >> 1 < _LARGEST:
                raise InputRefused("a CBOR break outside an indefinite-length item")
            if stack.pop() & 3 == 3:
                raise InputRefused("an indefinite-length CBOR map ends after a key")
        else:
            items += 1
            if stack and stack[-1] & 3 == 1 and kind not in key_kinds:
                raise InputRefused(_KEY_RULE[limits.int_keys])
            if arg < 0 and arg != _INDEFINITE:
                if pos - arg > end:
                    raise InputRefused("CBOR ends inside an item head")
                arg, pos = int.from_bytes(data[pos : pos - arg], "big"), pos - arg
            if kind <= _TEXT:
                if kind != _INT:
                    if arg == _INDEFINITE:
                        pos = _skip_chunks(data, pos, end, kind)
                    elif arg > end - pos:
                        raise InputRefused("a CBOR string runs past the end of the input")
                    else:
                        pos += arg
            elif kind <= _TAG:
                if len(stack) >= max_depth:
                    raise InputRefused(f"CBOR nested deeper than {max_depth}")
                if kind == _TAG:
                    if arg not in limits.tags:
                        raise InputRefused(f"CBOR tag {arg} is not allowed here")
                    stack.append(2)  # a tag's content: exactly one item
                    continue
                if arg == _INDEFINITE:
                    stack.append(_OPEN << 1 | (kind == _MAP))
                    continue
                entries = arg * 2 if kind == _MAP else arg
                if entries > max_items - items or entries > end - pos:
                    raise InputRefused(f"a CBOR container of {arg} entries is larger than allowed")
                if entries:
                    stack.append(entries << 1 | (kind == _MAP))
                    continue
            elif kind == _FLOAT:
                if not limits.floats:
                    raise InputRefused("floating-point numbers are not accepted")
            elif kind == _OTHER_SIMPLE:
                raise InputRefused("a CBOR simple value other than false, true and null")
            elif kind == _RESERVED:
                raise InputRefused("a reserved CBOR additional-information value")
        # An item is complete (a scalar, or a container just closed): count it in its parent.
        while stack:
            frame = stack[-1] - 2
            if frame >> 1:
                stack[-1] = frame
                break
            stack.pop()
        else:
            if items > max_items:
                raise InputRefused(f"more than {max_items} CBOR items")
            return


_OPEN = 1 << 62  # an indefinite container's count: more entries than any input holds
_LARGEST = 1 << 61


_KEY_RULE = {
    False: "a CBOR map key that is not a text string",
    True: "a CBOR map key that is not a text string or an integer",
}


def _skip_chunks(data: bytes, pos: int, end: int, kind: int) -> int:
    """Past an indefinite-length string's chunks (each a definite string of the same type)."""
    while True:
        if pos >= end:
            raise InputRefused("CBOR ends inside an indefinite-length string")
        initial = data[pos]
        pos += 1
        if initial == _BREAK:
            return pos
        if _HEADS[initial][0] != kind:
            raise InputRefused("a chunk of an indefinite-length CBOR string has the wrong type")
        info = initial & 0x1F
        if info < 24:
            size = info
        elif info < 28:
            width = 1 << (info - 24)
            if pos + width > end:
                raise InputRefused("CBOR ends inside an item head")
            size = int.from_bytes(data[pos : pos + width], "big")
            pos += width
        else:
            raise InputRefused("a chunk of an indefinite-length CBOR string is not definite")
        if pos + size > end:
            raise InputRefused("a CBOR string runs past the end of the input")
        pos += size


def _refuse_constant(name: str) -> Any:
    raise InputRefused(f"{name} is not a JSON number")


def json_items_bound(raw: bytes | str) -> int:
    """At least the number of JSON values and keys in `raw`, counted without parsing
    (in C, at memory speed).

    Every value or key but the first is preceded by `,` `:` `[` or `{`, so their count
    bounds the items (characters inside strings only raise it). json.loads builds the
    whole value before the walk can bound it: 30 MB of `[],` cost 7 s and 1.4 GB.
    """
    if isinstance(raw, str):
        return 1 + raw.count(",") + raw.count(":") + raw.count("[") + raw.count("{")
    return 1 + raw.count(b",") + raw.count(b":") + raw.count(b"[") + raw.count(b"{")


def loads_json(data: bytes | str, limits: Limits = JSON_BODY) -> Any:
    """Parse JSON and walk it with `limits`; NaN, Infinity and lone surrogates are refused.

    The walk after parsing applies the exact item bound; the count before it only keeps
    json.loads' work in proportion to that bound, with room for punctuation in strings.
    """
    separators = json_items_bound(data)
    if separators > 4 * limits.max_items + 1024:
        raise InputRefused(f"{separators} JSON separators, for at most {limits.max_items} items")
    try:
        value = json.loads(data, parse_constant=_refuse_constant)
    except InputRefused:
        raise
    except RecursionError:
        raise InputRefused(f"JSON nested deeper than {limits.max_depth}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        # json's messages give a position, never the input; int() over 4300 digits says so
        raise InputRefused(f"not valid JSON: {str(exc)[:120]}") from None
    check_value(value, limits)
    return value


def check_value(value: Any, limits: Limits = JSON_BODY) -> None:
    """Walk a decoded value (JSON data) against `limits`, iteratively."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    items = 0
    while stack:
        item, depth = stack.pop()
        items += 1
        if items > limits.max_items:
            raise InputRefused(f"more than {limits.max_items} JSON items")
        kind = type(item)
        if kind is str:
            _check_text(item)
        elif kind is float and not limits.floats:
            raise InputRefused("floating-point numbers are not accepted")
        elif kind is dict or kind is list:
            if depth >= limits.max_depth:
                raise InputRefused(f"JSON nested deeper than {limits.max_depth}")
            if kind is dict:
                for key, child in item.items():
                    if type(key) is not str:
                        raise InputRefused("a map key that is not a string")
                    _check_text(key)
                    items += 1
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)


def _check_text(text: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InputRefused("a string holds a lone surrogate (not valid Unicode)") from None


SHOWN_CHARS = 40


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """A hostile value as a message may quote it: bounded, one line, nothing invisible.

    Text keeps its first `limit` characters with every control, format,
    separator and surrogate character written as an escape; other values
    are described by type and size, never expanded.
    """
    if isinstance(value, str):
        head = value[:limit]
        out = "".join(_visible(c) for c in head)
        more = "…" if len(value) > limit else ""
        return f'"{out}{more}"'
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        if -(10**limit) < value < 10**limit:
            return str(value)
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, bytes | bytearray | memoryview):
        return f"{len(value)} bytes"
    if isinstance(value, dict):
        return f"a map of {len(value)} entries"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} items"
    return f"a value of type {type(value).__name__}"


def shown_keys(keys: Any, limit: int = 5) -> str:
    """Map keys (or any names) for a message: the first `limit`, each `shown`, sorted as text.

    Sorting by the shown text never compares values of different types, and
    at most `limit` are shown, so a map of thousands of keys stays one line.
    """
    names = sorted(shown(key) for key in keys)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return "[" + ", ".join(names[:limit]) + "]" + more


def _visible(char: str) -> str:
    if char.isprintable() and unicodedata.category(char) not in _HIDDEN:
        return char
    code = ord(char)
    return (
        f"\\x{code:02x}"
        if code < 0x100
        else f"\\u{code:04x}"
        if code < 0x10000
        else (f"\\U{code:08x}")
    )


_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
