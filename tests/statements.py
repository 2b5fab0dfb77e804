"""Which statement of docs/PROTOCOL.md a test checks.

Statements a client depends on carry an anchor in the document,
`<a id="s-some-rule"></a>`; a test that checks one is decorated
`@covers("s-some-rule")`. tests/test_docs.py reads both sides: every anchor
needs a test and every `covers` names an anchor, so a rule added to the
document without a test, or a test whose rule was removed, is noticed.
The decorator only records; the check is by reading the test sources.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., object])


def covers(*statements: str) -> Callable[[F], F]:
    """Mark a test as checking these statements of docs/PROTOCOL.md."""

    def mark(test: F) -> F:
        test.__dict__.setdefault("protocol_statements", []).extend(statements)
        return test

    return mark
