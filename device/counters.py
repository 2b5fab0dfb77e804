"""What this run of the device has done on its link and in its journal.

Counted from process start and not journaled: they describe the session a
host is looking at. Documents per commit shows how much group commit is
sharing each fsync under the host's load; NAKs, BUSYs and replays show how
the link and the host's retransmissions behave.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(slots=True)
class RunCounts:
    document_commits: int = 0  # journal transactions that wrote documents
    documents: int = 0  # documents those transactions wrote
    naks_sent: int = 0
    busy_sent: int = 0
    replays: int = 0  # retransmitted requests answered with their recorded response

    def committed(self, documents: int) -> None:
        self.document_commits += 1
        self.documents += documents

    def to_body(self) -> dict[str, int]:
        return asdict(self)
