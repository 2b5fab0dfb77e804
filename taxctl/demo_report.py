"""What the demo tells: the tally it keeps, a live progress line, the summary table."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Tally:
    issued: int = 0
    issued_offline: int = 0
    limited: list[str] = field(default_factory=list)  # the refusal each printer hit offline
    synced: int = 0
    verified: int = 0
    claimed: int = 0
    refused_as_expected: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    lost: int = 0
    duplicated: int = 0

    @property
    def all_expected(self) -> bool:
        return not self.unexpected

    def expect(self, what: str, happened: bool, detail: Any = "") -> None:
        """Something that must hold; what did not is listed and fails the demo."""
        if not happened:
            self.unexpected.append(f"{what}: {detail}")
            print(f"   UNEXPECTED: {what}: {detail}")

    def expect_refusal(self, label: str, what: str, refused: bool, detail: Any) -> None:
        """A fraud or a mistake the system must refuse; counted under `label` when it does."""
        self.expect(what, refused, detail)
        if refused:
            self.refused_as_expected.append(label)


class Progress:
    """One live line on a terminal; nothing but the final state elsewhere."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.live = sys.stdout.isatty()

    def show(self, done: int, total: int) -> None:
        if self.live and total:
            filled = 30 * done // total
            bar = "#" * filled + "." * (30 - filled)
            print(f"\r   {self.label} [{bar}] {done}/{total}", end="", flush=True)

    def end(self, done: int, total: int, seconds: float) -> None:
        if self.live:
            print("\r" + " " * 79 + "\r", end="")
        print(f"   {self.label}: {done}/{total} in {seconds:.1f} s")


def format_summary(tally: Tally, seconds: float) -> str:
    rows = [
        ("issued", tally.issued, f"{tally.issued_offline} of them while the chain was away"),
        ("offline", tally.issued_offline, "then refused: " + ", ".join(sorted(set(tally.limited)))),
        ("synced", tally.synced, "on the chain, byte for byte as signed"),
        ("verified", tally.verified, f"authentic by 查验; {tally.claimed} claimed"),
        (
            "refused as expected",
            len(tally.refused_as_expected),
            ", ".join(
                f"{what} x{n}" if n > 1 else what
                for what, n in Counter(tally.refused_as_expected).items()
            ),
        ),
        ("lost", tally.lost, ""),
        ("duplicated", tally.duplicated, ""),
    ]
    lines = [f"   {name:<20} {value:>6}  {note}".rstrip() for name, value, note in rows]
    verdict = "ok" if tally.all_expected and not (tally.lost or tally.duplicated) else "FAILED"
    return "\n".join(["summary", *lines, f"   {verdict} in {seconds:.1f} s"])


def restart_commands(root: Path, devices: int) -> str:
    lines = [
        f"   taxctl hostsim chain --data {root}/chain --training --listen 127.0.0.1:8700 &",
    ]
    ports = []
    for n in range(1, devices + 1):
        tty = f"{root}/device-{n}.tty"
        ports.append(f"--device {tty}")
        lines.append(f"   taxctl device run --state {root}/device-{n} --link {tty} --training &")
    lines.append(
        f"   taxctl syncd run --state {root}/syncd {' '.join(ports)}"
        " --chain http://127.0.0.1:8700 --api 127.0.0.1:8631 &"
    )
    lines.append(f"   (logs of this run: {root}/logs)")
    return "\n".join(lines)
