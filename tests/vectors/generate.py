"""Make the protocol test vectors by running the real device code on fixed inputs.

A device whose key comes from a published label, a clock stopped at a
fixed time, and fixed request ids: every byte is reproducible. Run as
`python -m tests.vectors.generate` to rewrite protocol.json and print the
markdown for docs/PROTOCOL.md §9; the tests regenerate them and compare.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from device.app import open_device
from device.limits import Limits
from device.loopback import MemoryPort, memory_pair
from device.protocol import codec
from device.protocol.clock import ManualClock
from device.protocol.commands import Command
from device.protocol.framing import (
    ESCAPE,
    FLAG,
    Frame,
    FrameDecoder,
    FrameType,
    encode_content,
    encode_frame,
    escape,
)
from device.server import DeviceServer

KEY_LABEL = "taxctl protocol test vector device"
TIME = 1_795_593_600  # 2026-11-25T08:00:00Z
FIXTURE = Path(__file__).with_name("protocol.json")
HELLO_BODY = codec.encode({"versions": [1], "host": "pos"})
ISSUE_BODY = {
    "buyer": {"name": "ACME Trading", "tax_id": "91350100M000100Y43"},
    "items": [{"name": "Green tea", "quantity": "1.5", "unit_price": 1000, "tax_rate_bp": 1300}],
}


def request(rid: int, command: Command, body: dict[str, Any]) -> bytes:
    return encode_frame(Frame(FrameType.REQUEST, rid, command, 0, codec.encode(body)))


def escape_controls(content: bytes) -> bytes:
    """A frame as an RFC 1662 framer with the default async control character map sends
    it: 0x00-0x1F escaped as well as 0x7D and 0x7E."""
    out = bytearray([FLAG])
    for byte in content:
        if byte < 0x20 or byte in (FLAG, ESCAPE):
            out += bytes([ESCAPE, byte ^ 0x20])
        else:
            out.append(byte)
    return bytes(out + bytes([FLAG]))


async def _exchange(host: MemoryPort, wire: bytes) -> bytes:
    """Everything the device sends for `wire`, up to its response (or NAK)."""
    host.write(wire)
    answer = bytearray()
    while True:
        answer += await asyncio.wait_for(host.read(), 5)
        events = FrameDecoder().feed(bytes(answer))
        if any(
            isinstance(e, Frame) and e.type in (FrameType.RESPONSE, FrameType.NAK) for e in events
        ):
            return bytes(answer)


async def _generate(state: Path) -> list[dict[str, Any]]:
    state.mkdir()
    seed = hashlib.sha256(KEY_LABEL.encode()).digest()
    fd = os.open(state / "device.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, seed)
    os.close(fd)
    fw = open_device(state, training=True, clock=ManualClock(TIME), limits=Limits())
    host, device = memory_pair()
    server = DeviceServer(fw, device)
    stop = asyncio.Event()
    task = asyncio.create_task(server.serve(stop))
    vectors = []
    try:
        for name, rid, command, body in (
            ("info", 0x0123456789ABCDEF, Command.INFO, {}),
            ("issue", 0x0123456789ABCDF0, Command.ISSUE, ISSUE_BODY),
        ):
            wire = request(rid, command, body)
            answer = await _exchange(host, wire)
            vectors.append({"name": f"{name} request", "from": "host", "hex": wire.hex()})
            vectors.append({"name": f"{name} response", "from": "device", "hex": answer.hex()})
        damaged = bytearray(request(0x0123456789ABCDF1, Command.STATUS, {}))
        damaged[-2] ^= 0x01  # one bit of the FCS
        answer = await _exchange(host, bytes(damaged))
        vectors.append(
            {"name": "status request, FCS damaged", "from": "host", "hex": bytes(damaged).hex()}
        )
        vectors.append({"name": "NAK, bad FCS", "from": "device", "hex": answer.hex()})
        # The id holds 7E, 7D and control bytes: the host escapes them all, the device's
        # answer only 7E and 7D.
        hello = Frame(FrameType.REQUEST, 0x7E7D0A0D11130003, Command.HELLO, 0, HELLO_BODY)
        wire = escape_controls(encode_content(hello))
        answer = await _exchange(host, wire)
        vectors.append(
            {"name": "hello request, control bytes escaped", "from": "host", "hex": wire.hex()}
        )
        vectors.append({"name": "hello response", "from": "device", "hex": answer.hex()})
        status = encode_content(Frame(FrameType.REQUEST, 0x0123456789ABCDF2, Command.STATUS))
        cut = bytes([FLAG]) + escape(status[:16]) + bytes([FLAG])
        answer = await _exchange(host, cut)
        vectors.append(
            {"name": "status request cut to 16 bytes, damaged", "from": "host", "hex": cut.hex()}
        )
        vectors.append({"name": "NAK, truncated", "from": "device", "hex": answer.hex()})
    finally:
        stop.set()
        await task
        fw.journal.close()
    return vectors


def generate() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        vectors = asyncio.run(_generate(Path(tmp) / "state"))
    return {
        "device_key_seed": f"SHA-256({KEY_LABEL!r})",
        "time": "2026-11-25T08:00:00Z",
        "mode": "training",
        "vectors": vectors,
    }


def markdown(data: dict[str, Any]) -> str:
    lines = []
    for vector in data["vectors"]:
        hexed = vector["hex"]
        lines.append(f"**{vector['name']}** (from the {vector['from']}, {len(hexed) // 2} bytes)")
        lines.append("")
        lines.append("```")
        lines.extend(hexed[i : i + 64] for i in range(0, len(hexed), 64))
        lines.append("```")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    data = generate()
    FIXTURE.write_text(json.dumps(data, indent=2) + "\n")
    sys.stdout.write(markdown(data))
