"""Fixtures: a temporary root holding the files installed as docs/operating.md says."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy import install


@pytest.fixture
def installed() -> Iterator[Path]:
    with install.open_dir() as where:
        root = Path(where) / "root"
        install.run(root)
        yield root
