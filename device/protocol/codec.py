"""Deterministic CBOR (RFC 8949 §4.2.1) and strict decoding.

Documents are signed over their exact bytes, so every encoder in the
project (device, chain, tests) must produce the same bytes for the same
value: definite lengths, shortest integer forms, map keys sorted by their
encoded bytes. For the text keys used throughout, that order is "shorter
key first, then bytewise", which is also cbor2's canonical order.

Decoding is strict and bounded: every input passes the policy of
`untrusted.py` (no tags but those a format defines, bounded depth and
size) before cbor2 sees it; one data item and nothing after it, and where a
signature depends on the bytes (`decode_canonical`), the input must be
exactly what `encode` would produce, so that no two byte strings mean the
same document.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Mapping
from typing import Any

import cbor2

from device.protocol.untrusted import CBOR_BODY, InputRefused, Limits, check_cbor

_SENTINELS = (type(cbor2.loads(b"\xff")), type(cbor2.loads(b"\xf7")))  # break, undefined


class CodecError(ValueError):
    """Bytes that are not the single, well-formed CBOR item expected."""


class _Encoders(threading.local):
    """One reusable encoder of each kind per thread.

    `cbor2.dumps` builds an encoder and a buffer for every call, about
    2 us: more than encoding a device response takes, and it runs twice
    for every invoice (payload and response). An encoder that fails part
    way is replaced, so no state from a bad value leaks into the next.
    """

    def __init__(self) -> None:
        self.busy = False
        self.reset()

    def reset(self) -> None:
        self.buffer = io.BytesIO()
        self.canonical = cbor2.CBOREncoder(self.buffer, canonical=True)
        self.ordered = cbor2.CBOREncoder(self.buffer)


_encoders = _Encoders()


def _dump(value: Any, *, canonical: bool) -> bytes:
    local = _encoders
    if local.busy:  # re-entered from within an encode (a signal handler, say)
        return bytes(cbor2.dumps(value, canonical=canonical))
    local.busy = True
    buffer = local.buffer
    try:
        buffer.seek(0)
        buffer.truncate()
        (local.canonical if canonical else local.ordered).encode(value)
        return buffer.getvalue()
    except BaseException:
        local.reset()
        raise
    finally:
        local.busy = False


def encode(value: Any) -> bytes:
    try:
        return _dump(value, canonical=True)
    except (cbor2.CBOREncodeError, TypeError, ValueError) as exc:
        raise CodecError(f"cannot encode as CBOR: {exc}") from exc


def encode_ordered(value: Any) -> bytes:
    """Encode a value whose maps are already in deterministic key order.

    About twice as fast as `encode`; the hot path (building a document)
    constructs its maps in order with `ordered_map`. Tests check the two
    agree.
    """
    return _dump(value, canonical=False)


def key_order(key: str) -> tuple[int, bytes]:
    raw = key.encode()
    return (len(raw), raw)


def ordered_map(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict: the same map with its text keys in deterministic encoding order."""
    keys = tuple(mapping)
    order = _ORDERS.get(keys)
    if order is None:
        order = tuple(sorted(keys, key=key_order))
        if len(_ORDERS) < 1024:  # documents use a handful of key sets
            _ORDERS[keys] = order
    return {k: mapping[k] for k in order}


_ORDERS: dict[tuple[str, ...], tuple[str, ...]] = {}


def _admit(data: bytes, limits: Limits) -> None:
    """The decoding policy (device/protocol/untrusted.py), before cbor2 builds anything."""
    if not data:
        raise CodecError("empty body where a CBOR item was expected")
    try:
        check_cbor(data, limits)
    except InputRefused as exc:
        raise CodecError(f"CBOR refused: {exc}") from None


def decode(data: bytes | bytearray | memoryview, limits: Limits = CBOR_BODY) -> Any:
    data = bytes(data)
    _admit(data, limits)
    stream = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(stream).decode()
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise CodecError(f"not valid CBOR: {exc}") from exc
    if isinstance(value, _SENTINELS):
        raise CodecError("a lone CBOR break or undefined is not a data item")
    if stream.tell() != len(data):
        raise CodecError(f"{len(data) - stream.tell()} trailing bytes after the CBOR item")
    return value


def decode_leading(raw: bytes, limits: Limits = CBOR_BODY) -> Any:
    """The first item of `raw`, for callers that then check its exact encoding is all
    of `raw` (which also rules out trailing bytes, without a stream to track them)."""
    _admit(raw, limits)
    try:
        value = cbor2.loads(raw)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise CodecError(f"not valid CBOR: {exc}") from exc
    if isinstance(value, _SENTINELS):
        raise CodecError("a lone CBOR break or undefined is not a data item")
    return value


def decode_canonical(data: bytes | bytearray | memoryview, limits: Limits = CBOR_BODY) -> Any:
    """Decode, refusing anything but the deterministic encoding of the value.

    Re-encoding with the order-preserving encoder catches non-shortest
    heads, indefinite lengths and duplicate keys; a separate walk checks map
    key order. (Cheaper than a sorting re-encode; the chain does this for
    every document it receives.) Floats are refused as a side effect: they
    never occur in this project's documents.
    """
    raw = bytes(data)
    try:
        return _decode_deterministic(raw, limits)
    except _Irregular:
        pass  # the checks below say what is wrong (or accept what the one pass does not)
    value = decode_leading(raw, limits)
    if encode_ordered(value) != raw or not _keys_in_order(value):
        raise CodecError("CBOR is not in deterministic encoding (RFC 8949 §4.2.1)")
    return value


class _Irregular(Exception):
    """Not in the one form `_decode_deterministic` reads; the full checks decide."""


def _head_entry(initial: int) -> tuple[int, int] | None:
    """(major type, argument) of an initial byte; an argument -n is in the next n bytes.
    None for what the one pass leaves to the full checks: tags, floats, indefinite
    lengths, reserved values, simple values other than false, true and null."""
    major, info = initial >> 5, initial & 0x1F
    if major == 6:
        return None
    if major == 7:
        return (7, info) if 20 <= info <= 22 else None
    if info < 24:
        return major, info
    return (major, -(1 << (info - 24))) if info < 28 else None


_HEAD_ENTRIES = tuple(_head_entry(b) for b in range(256))
_SHORTEST = {1: 24, 2: 0x100, 4: 0x10000, 8: 0x100000000}  # the least argument each size holds
_SIMPLE_VALUES = {20: False, 21: True, 22: None}
_Frame = tuple[Any, int, bool, Any, bytes]


def _decode_deterministic(raw: bytes, limits: Limits) -> Any:
    """The value of `raw` if it is the deterministic encoding of one, in one pass, else
    _Irregular. What it reads (definite lengths, shortest heads, text keys in strictly
    increasing encoded order, no tags or floats, within `limits`' depth and item count)
    is exactly what `check_cbor`, cbor2 and the re-encoding comparison accept, and it
    builds the value cbor2 builds (tests compare them on hostile input): a third less
    time than the three passes for a document's payload.

    One loop on purpose, as in `check_cbor`: a call per item would cost more than the walk.
    """
    end, pos, items, max_items = len(raw), 0, 0, limits.max_items
    stack: list[_Frame] = []
    root: list[Any] = []
    container: Any = root  # the open list or dict, and how many entries it still takes
    remaining, is_map, key, last_key = 1, False, None, b""
    while True:
        if pos >= end:
            raise _Irregular
        start = pos
        entry = _HEAD_ENTRIES[raw[pos]]
        if entry is None:
            raise _Irregular
        major, arg = entry
        pos += 1
        if arg < 0 and major != 7:
            size = -arg
            arg = int.from_bytes(raw[pos : pos + size], "big")
            pos += size
            if pos > end or arg < _SHORTEST[size]:
                raise _Irregular
        items += 1
        if items > max_items:  # before building more than the policy admits (see _Irregular)
            raise _Irregular
        if major == 3:  # text first: most items are (keys and values)
            if arg > end - pos:
                raise _Irregular
            pos += arg
            try:
                value: Any = raw[pos - arg : pos].decode()
            except UnicodeDecodeError:
                raise _Irregular from None
            if key is None and is_map:  # the key: after the previous one's encoding
                encoded = raw[start:pos]
                if encoded <= last_key:
                    raise _Irregular
                key, last_key = value, encoded
                continue
        elif key is None and is_map:
            raise _Irregular  # a key that is not text
        elif major == 0:
            value = arg
        elif major == 2:
            if arg > end - pos:
                raise _Irregular
            pos += arg
            value = raw[pos - arg : pos]
        elif major == 1:
            value = -1 - arg
        elif major == 7:
            value = _SIMPLE_VALUES[arg]
        else:
            if len(stack) >= limits.max_depth:
                raise _Irregular
            value = [] if major == 4 else {}
            if arg:
                # Entries past the item bound are refused at the head, as check_cbor does,
                # not after building them (a payload is parsed before its signature).
                if arg > end - pos or (arg << (major == 5)) > max_items - items:
                    raise _Irregular
                if is_map:
                    container[key] = value
                else:
                    container.append(value)
                stack.append((container, remaining, is_map, key, last_key))
                container, remaining, is_map, key, last_key = value, arg, major == 5, None, b""
                continue
        if is_map:
            container[key] = value
            key = None
        else:
            container.append(value)
        remaining -= 1
        while not remaining:  # containers complete with this item
            if not stack:
                if pos != end:
                    raise _Irregular
                return root[0]
            container, remaining, is_map, _, last_key = stack.pop()
            key = None
            remaining -= 1


def _encoded_key(key: Any) -> bytes:
    return bytes(cbor2.dumps(key, canonical=True))


_KEYS_OK: dict[tuple[Any, ...], bool] = {}
# The cache is for the handful of key sets this project's objects use (a document's
# payload has about twenty short keys). Its keys come from the input, so only small key
# sets are kept: otherwise each of its 4096 entries could hold a key as long as a body.
_CACHED_KEYS = 32
_CACHED_KEY_CHARS = 512


def _cacheable(keys: tuple[Any, ...]) -> bool:
    if len(keys) > _CACHED_KEYS:
        return False
    size = 0
    for key in keys:
        size += len(key) if type(key) is str else 1
    return size <= _CACHED_KEY_CHARS


_CONTAINERS = (dict, list, cbor2.CBORTag)


def _keys_in_order(value: Any) -> bool:
    stack = [value]
    pop, push = stack.pop, stack.append
    while stack:
        item = pop()
        kind = type(item)
        if kind is dict:
            keys = tuple(item)
            ok = _KEYS_OK.get(keys)
            if ok is None:
                try:
                    ok = list(keys) == sorted(keys, key=_encoded_key)
                except (TypeError, cbor2.CBOREncodeError):
                    ok = False
                if len(_KEYS_OK) < 4096 and _cacheable(keys):
                    _KEYS_OK[keys] = ok
            if not ok:
                return False
            for child in item.values():
                if type(child) in _CONTAINERS:
                    push(child)
        elif kind is list:
            for child in item:
                if type(child) in _CONTAINERS:
                    push(child)
        elif kind is cbor2.CBORTag:
            push(item.value)
    return True


# The types json_view gives back as they are: a map's values of these (most of a
# document's) are not passed to it again.
_JSON_LEAVES = frozenset({str, int, bool, type(None)})


def json_view(value: Any) -> Any:
    """A decoded CBOR value as JSON data: byte strings (hashes, keys, signatures) in hex."""
    if isinstance(value, dict):
        leaves = _JSON_LEAVES
        return {str(k): v if type(v) in leaves else json_view(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_view(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value
