"""Unified social credit codes (统一社会信用代码), GB 32100-2015.

Eighteen characters from a 31-symbol alphabet (digits and capitals without
I, O, S, V, Z); the last is a check character: weights 3^i mod 31 over the
first seventeen, check = (31 - sum mod 31) mod 31.
"""

from __future__ import annotations

import functools
import re

from device.protocol.untrusted import shown

ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
LENGTH = 18
_VALUE = {c: i for i, c in enumerate(ALPHABET)}
_WEIGHTS = tuple(pow(3, i, 31) for i in range(LENGTH - 1))
_SHAPE = re.compile(f"[{ALPHABET}]{{{LENGTH}}}")


def check_character(first17: str) -> str:
    if len(first17) != LENGTH - 1 or any(c not in _VALUE for c in first17):
        raise ValueError("need 17 characters from the GB 32100 alphabet")
    total = sum(_VALUE[c] * w for c, w in zip(first17, _WEIGHTS, strict=True))
    return ALPHABET[(31 - total % 31) % 31]


def problem(code: object) -> str | None:
    """Why `code` is not a valid unified social credit code, or None if it is."""
    if not isinstance(code, str):
        return "must be a string"

    if len(code) != LENGTH:  # before the cache: it holds only 18-character strings
        return f"must be {LENGTH} characters, got {len(code)}"
    return _problem(code)


@functools.lru_cache(maxsize=4096)  # a shop sees the same few buyers again and again
def _problem(code: str) -> str | None:
    if _SHAPE.fullmatch(code):
        expected = check_character(code[:-1])
        return (
            None if code[-1] == expected else f"check character is {code[-1]}, expected {expected}"
        )
    if len(code) != LENGTH:
        return f"must be {LENGTH} characters, got {len(code)}"
    bad = [c for c in code if c not in _VALUE]
    if bad:
        return (
            f"character {shown(bad[0])} is not allowed (digits and capitals without I, O, S, V, Z)"
        )
    expected = check_character(code[:-1])
    if code[-1] != expected:
        return f"check character is {code[-1]}, expected {expected}"
    return None


def is_valid(code: object) -> bool:
    return problem(code) is None


def make(first17: str) -> str:
    """Complete a 17-character prefix with its check character."""
    return first17 + check_character(first17)
