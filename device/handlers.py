"""Which code carries out each command: one table, read by the server and the writer.

Reads answer at once from committed state (device/read_commands.py); issuing commands are
signed in groups and committed together; the other writes each commit alone. Every
handler is the firmware's: the server and the writer only route and schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from device import read_commands
from device.firmware import Firmware, Write
from device.protocol.commands import ISSUING, Command
from device.protocol.document import Kind
from device.protocol.status import DeviceError, Status

Request = tuple[int, bytes]  # (request id, request digest), journaled with a document
ReadHandler = Callable[[Firmware, Any], dict[str, Any]]
IssueHandler = Callable[[Firmware, Any, Request], dict[str, Any]]
UpdateHandler = Callable[[Firmware, Any], Write]


def _report(kind: Kind) -> IssueHandler:
    def report(fw: Firmware, body: Any, request: Request) -> dict[str, Any]:
        if body not in (None, {}):
            raise DeviceError(Status.BAD_REQUEST, f"{kind.name} takes an empty body")
        return fw.report(kind, request)

    return report


# Handlers look the firmware's methods up on the instance, at the call.
READS: dict[Command, ReadHandler] = {
    Command.HELLO: read_commands.hello,
    Command.INFO: read_commands.info,
    Command.STATUS: read_commands.status,
    Command.FETCH: read_commands.fetch,
    Command.GET_DOCUMENT: read_commands.get_document,
    Command.EXPORT: read_commands.export,
    Command.CSR: read_commands.csr,
    Command.SEGMENT_REQUEST: read_commands.segment_request,
    Command.CONTROL: read_commands.control,
}
ISSUES: dict[Command, IssueHandler] = {
    Command.ISSUE: lambda fw, body, request: fw.issue(body, request),
    Command.CREDIT: lambda fw, body, request: fw.credit(body, request),
    Command.X_REPORT: _report(Kind.X_REPORT),
    Command.Z_REPORT: _report(Kind.Z_REPORT),
}
UPDATES: dict[Command, UpdateHandler] = {
    Command.ACK_SYNC: lambda fw, body: fw.ack_sync(body),
    Command.LOAD_CERT: lambda fw, body: fw.load_cert(body),
    Command.LOAD_SEGMENT: lambda fw, body: fw.load_segment(body),
    Command.SET_TIME: lambda fw, body: fw.set_time(body),
}
WRITES = frozenset(ISSUES) | frozenset(UPDATES)  # in arrival order, by the writer

assert set(ISSUES) == ISSUING
assert len(READS) + len(WRITES) == len(Command) and not set(READS) & WRITES
