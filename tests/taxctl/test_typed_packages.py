"""PEP 561: every package that exports types carries py.typed, and the wheel ships it."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_each_package_is_marked_typed_and_the_marker_is_package_data() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    data = project["tool"]["setuptools"]["package-data"]
    assert "py.typed" in data["*"]
    for package in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert (ROOT / package.rstrip("*") / "py.typed").is_file(), package
