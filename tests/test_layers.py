"""The packages import downwards only: taxctl_base <- device <- syncd, hostsim <- taxctl.

The taxctl/ command line is the top: it may import every package, and none may import
it (a daemon or the chain simulator that needs the CLI package drags in every
command). taxctl_base, below everything, imports nothing of the project but the
device's input policy. Walks every module's imports, including those inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> the project's packages it must never import
FORBIDDEN = {
    "taxctl_base": {"taxctl", "syncd", "hostsim"},
    "device": {"taxctl", "syncd", "hostsim"},
    "syncd": {"taxctl", "hostsim"},
    "hostsim": {"taxctl"},
}
BASE_MAY_IMPORT = ("device.protocol",)  # taxctl_base's only way into the device package


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every absolute import in a file (relative ones stay inside)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def top(module: str) -> str:
    return module.split(".", 1)[0]


def upward_imports(package: str) -> list[str]:
    wrong = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module in imported(path):
            if top(module) in FORBIDDEN[package] or (
                package == "taxctl_base"
                and top(module) == "device"
                and not module.startswith(BASE_MAY_IMPORT)
            ):
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return wrong


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_package_imports_upwards(package: str) -> None:
    assert upward_imports(package) == []


def test_the_walk_sees_an_upward_import(tmp_path: Path) -> None:
    """The walk finds imports at any depth and in any form, so the test above can fail."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os\n"
        "from taxctl_base import exits\n"
        "def f():\n"
        "    import taxctl.cli\n"
        "    from taxctl import demo\n"
        "    from . import sibling\n"
    )
    modules = [module for _, module in imported(sample)]
    assert modules == ["os", "taxctl_base", "taxctl.cli", "taxctl"]
    assert [top(m) for m in modules if top(m) in FORBIDDEN["hostsim"]] == ["taxctl", "taxctl"]


# Test folders that are about no one package: the installed files (packaging/), fuzz
# campaigns over every decoder, and the protocol's test vectors.
CROSS_CUTTING = {"deploy", "fuzz", "vectors"}


def test_the_test_tree_mirrors_the_package_tree() -> None:
    """tests/X/Y holds the tests of package X.Y: a maintainer finds a module's tests by its
    path, and a test folder with no package beside it is a misplaced one."""
    misplaced = []
    for folder in sorted(p for p in (ROOT / "tests").rglob("*") if p.is_dir()):
        relative = folder.relative_to(ROOT / "tests")
        if relative.parts[0] in CROSS_CUTTING or "__pycache__" in relative.parts:
            continue
        if relative.parts[-1] == "unit" and (ROOT / Path(*relative.parts[:-1])).is_dir():
            continue  # a package's unit tests, apart from its whole-process ones
        if not (ROOT / relative / "__init__.py").is_file():
            misplaced.append(str(relative))
    assert not misplaced, f"test folders with no package of that path: {misplaced}"
