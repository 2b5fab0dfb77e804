"""`taxctl completion`: the scripts come from the parser, so they name every command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from taxctl_base import exits
from tests.helpers import run_taxctl

ROOT = Path(__file__).resolve().parents[2]


def test_bash_completion_names_the_subcommands() -> None:
    out = run_taxctl("completion", "bash")
    assert out.returncode == 0, out.stderr
    for word in ("device", "syncd", "ports", "verify", "completion", "issue", "--invoice"):
        assert word in out.stdout
    assert "complete -o bashdefault -F _shtab_taxctl taxctl" in out.stdout


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_bash_completes_a_partial_subcommand() -> None:
    script = run_taxctl("completion", "bash").stdout
    probe = (
        'COMP_WORDS=(taxctl device is); COMP_CWORD=2; COMP_LINE="taxctl device is";'
        ' COMP_POINT=${#COMP_LINE}; _shtab_taxctl taxctl is device; echo "${COMPREPLY[@]}"'
    )
    done = subprocess.run(
        ["bash", "-c", f"{script}\n{probe}"], capture_output=True, text=True, timeout=30
    )
    assert done.stdout.split() == ["issue"], done.stderr


@pytest.mark.parametrize("shell", ["zsh", "tcsh"])
def test_other_shells(shell: str) -> None:
    out = run_taxctl("completion", shell)
    assert out.returncode == 0 and "device" in out.stdout and "syncd" in out.stdout


def test_an_unknown_shell_is_a_usage_error() -> None:
    out = run_taxctl("completion", "fish")
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_a_reader_that_stops_early_gets_no_traceback() -> None:
    """`taxctl completion bash | head -1`: the command ends with the documented exit code and
    says nothing on stderr (it printed a BrokenPipeError traceback)."""
    with subprocess.Popen(
        [sys.executable, "-m", "taxctl", "completion", "bash"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # the reader goes away before the interpreter has even started
        stderr = proc.stderr.read()
        assert proc.wait(30) == exits.OUTPUT_CLOSED, stderr
    assert stderr == b""
