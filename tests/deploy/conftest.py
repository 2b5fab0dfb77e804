"""Fixtures: a temporary root holding the files installed as docs/operating.md says."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy import install


def open_dir() -> tempfile.TemporaryDirectory[str]:
    """A temporary directory every user may enter (pytest's tmp_path has 0700 parents,
    and the point of some tests is what another user can read)."""
    where = tempfile.TemporaryDirectory(prefix="taxctl-deploy-")
    os.chmod(where.name, 0o755)
    return where


@pytest.fixture
def installed() -> Iterator[Path]:
    with open_dir() as where:
        root = Path(where) / "root"
        install.run(root)
        yield root
