"""The install steps of docs/operating.md, parsed out of the document and run as written.

The block is the fenced `sh` block after the `<!-- install-files` marker. Every line must
be `install -D -m MODE SOURCE "$DESTDIR"/DEST`: anything else is refused before a shell
runs it, so the block can only ever write under the root it is given.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OPERATING = REPO / "docs" / "operating.md"
MARKER = "<!-- install-files"
DESTINATION = re.compile(r'^"\$DESTDIR"(/\S+)$')


@dataclass(frozen=True)
class Step:
    mode: int
    source: str  # relative to the repository
    dest: str  # absolute, under DESTDIR


def block(text: str) -> str:
    """The shell block right after the marker; exactly one marker."""
    lines = text.splitlines()
    marks = [i for i, line in enumerate(lines) if line.startswith(MARKER)]
    assert len(marks) == 1, f"expected one {MARKER!r} line in operating.md, found {len(marks)}"
    start = marks[0] + 1
    assert lines[start] == "```sh", "the marker must be followed by a ```sh block"
    end = lines.index("```", start + 1)
    return "\n".join(lines[start + 1 : end]) + "\n"


def steps(script: str) -> list[Step]:
    out = []
    for line in script.splitlines():
        words = line.split()  # no quoting but "$DESTDIR": a path with a space is refused
        assert len(words) == 6 and words[:3] == ["install", "-D", "-m"], line
        mode, source, dest = words[3:]
        assert re.fullmatch(r"0[0-7]{3}", mode), f"mode {mode} is not 0NNN: {line}"
        where = DESTINATION.match(dest)
        assert where, f'the destination must start with "$DESTDIR"/: {line}'
        out.append(Step(int(mode, 8), source, where.group(1)))
    return out


def documented() -> tuple[str, list[Step]]:
    script = block(OPERATING.read_text(encoding="utf-8"))
    return script, steps(script)


def run(root: Path) -> list[Step]:
    """Run the documented block verbatim from the repository root with DESTDIR=root."""
    script, parsed = documented()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DESTDIR": str(root)}
    done = subprocess.run(
        ["sh", "-eu", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return parsed


def packaged() -> set[str]:
    """Every file under packaging/, relative to the repository."""
    files = (REPO / "packaging").rglob("*")
    return {str(p.relative_to(REPO)) for p in files if p.is_file()}


def open_dir() -> tempfile.TemporaryDirectory[str]:
    """A temporary directory every user may enter (pytest's tmp_path has 0700 parents,
    and the point of some tests is what another user can read)."""
    where = tempfile.TemporaryDirectory(prefix="taxctl-deploy-")
    os.chmod(where.name, 0o755)
    return where
