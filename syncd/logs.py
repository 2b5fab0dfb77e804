"""Log lines for a terminal or for journald: one line per event.

Under systemd (JOURNAL_STREAM is set and is our stderr) each line starts
with the sd-daemon priority prefix `<N>` instead of a timestamp: journald
stores the priority and adds its own time. Elsewhere lines carry a UTC
timestamp and the level name.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

PRIORITIES = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = PRIORITIES.get(record.levelno, 6)
        text = super().format(record).replace("\n", " | ")
        return f"<{priority}>{text}"


class TerminalFormatter(logging.Formatter):
    converter = __import__("time").gmtime

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", " | ")


def stderr_is_journal(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    stream = env.get("JOURNAL_STREAM", "")
    if ":" not in stream:
        return False
    device, _, inode = stream.partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return f"{st.st_dev}:{st.st_ino}" == f"{device}:{inode}"


def setup(level: str = "info", *, journal: bool | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if journal if journal is not None else stderr_is_journal():
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(
            TerminalFormatter(
                "%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%SZ"
            )
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    set_level(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def set_level(level: str) -> None:
    logging.getLogger().setLevel(getattr(logging, level.upper(), logging.INFO))
