"""One configured printer as the daemon runs it: its link and its sync engine, together.

The POS API is handed these, not bare links: it selects a printer by name,
port or device id here, and after issuing a document wakes that printer's
engine directly (nothing searches for it). The engine also wakes when the
link comes online or goes offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from syncd.link import DeviceLink

if TYPE_CHECKING:
    from syncd.engine import DeviceSync


@dataclass(eq=False)
class Attachment:
    link: DeviceLink
    engine: DeviceSync | None = None  # None: the POS API alone, in tests

    def __post_init__(self) -> None:
        engine = self.engine
        if engine is not None:
            self.link.on_change(lambda _link: engine.wake())

    def wake(self) -> None:
        """New documents were issued: sync now rather than at the next poll."""
        if self.engine is not None:
            self.engine.wake()

    def selected_by(self, selector: str) -> bool:
        """Whether a POS request's "device" names this printer."""
        link = self.link
        return selector in (link.name, link.config.port, link.device_id)
