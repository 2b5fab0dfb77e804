"""docs/python-api.md cannot drift: every ```python block in it runs, against loop://."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from device.protocol.commands import BAUD, HOST_MAX_IN_FLIGHT, MAX_RETRIES, RESPONSE_TIMEOUT
from taxctl.printer import RESENDS

DOC = Path(__file__).resolve().parents[2] / "docs" / "python-api.md"
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.M | re.S)


def blocks() -> list[str]:
    return BLOCK.findall(DOC.read_text(encoding="utf-8"))


def test_the_doc_has_examples() -> None:
    assert len(blocks()) >= 5


@pytest.mark.parametrize("index", range(len(blocks())))
def test_each_example_runs(index: int) -> None:
    source = blocks()[index]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(source, f"{DOC.name} example {index + 1}", "exec"), {"__name__": "__doc__"})
    assert "Traceback" not in out.getvalue()


def test_the_defaults_table_is_the_code() -> None:
    text = DOC.read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `(\w+)` \| ([\w.]+) \|", text, re.M))
    assert rows["baud"] == str(BAUD)
    assert float(rows["response_timeout"]) == RESPONSE_TIMEOUT
    assert int(rows["max_retries"]) == MAX_RETRIES
    assert int(rows["max_in_flight"]) == HOST_MAX_IN_FLIGHT
    assert int(rows["resends"]) == RESENDS
