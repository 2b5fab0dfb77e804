"""Commands of the device protocol and their request/response bodies.

The byte value travels in the frame's command field; bodies are CBOR maps
(see docs/PROTOCOL.md for every field). A command that writes the journal
is *issuing*: its response is kept with the document so that a
retransmission with the same request id returns it again, even after the
device restarts.
"""

from __future__ import annotations

from enum import IntEnum


class Command(IntEnum):
    HELLO = 0x01  # handshake: protocol version, limits
    INFO = 0x02  # identity, keys, registration, capacity
    STATUS = 0x03  # flags and counters
    ISSUE = 0x10  # sign an invoice
    CREDIT = 0x11  # sign a red-letter credit note against an earlier invoice
    X_REPORT = 0x12  # sign a running-totals report
    Z_REPORT = 0x13  # sign a day-close report and reset the running totals
    GET_DOCUMENT = 0x14  # one document by counter or by code and number (reprint)
    FETCH = 0x20  # unsynced documents from a counter, bounded by count and bytes
    ACK_SYNC = 0x21  # chain receipts: mark documents synced, reset offline limits
    CSR = 0x30  # certificate signing request for the tax bureau
    LOAD_CERT = 0x31  # install the bureau-signed device certificate
    LOAD_SEGMENT = 0x32  # install a bureau-signed invoice-number segment
    SEGMENT_REQUEST = 0x33  # a segment request signed by the device key, for the chain
    SET_TIME = 0x40  # set the device clock (never backwards)
    EXPORT = 0x41  # journal range for audit, synced or not
    CONTROL = 0x50  # emulator only: paper out / cover open switches


ISSUING = frozenset({Command.ISSUE, Command.CREDIT, Command.X_REPORT, Command.Z_REPORT})

# How long a host waits for a response before retransmitting, per command,
# in seconds. An ACK frame from the device extends any wait to LONG_TIMEOUT.
RESPONSE_TIMEOUT = 1.0
LONG_TIMEOUT = 10.0
ACK_AFTER = 0.2  # the device sends ACK if a response is not ready this soon
MAX_RETRIES = 5
BUSY_PAUSE = 0.05

DEFAULT_MAX_IN_FLIGHT = 64  # what a device accepts at once (it announces it in HELLO)
# A host's defaults, declared once: the client, syncd's options and the Printer API read
# them here. A host never keeps more in flight than the device announced in HELLO.
HOST_MAX_IN_FLIGHT = 32
BAUD = 115200
FETCH_MAX_COUNT = 1000
FETCH_MAX_BYTES = 60_000  # document bytes in one FETCH or EXPORT answer, at the most
