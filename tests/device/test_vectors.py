"""The protocol document and its vectors agree with the code, byte for byte."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from device.protocol import codec
from device.protocol.commands import Command
from device.protocol.framing import (
    FrameDecoder,
    FrameError,
    FrameType,
    NakReason,
    decode_frame,
    encode_frame,
)
from device.protocol.keys import KeyPair
from device.protocol.status import Status
from tests.helpers import pycose_verify
from tests.statements import covers
from tests.vectors.generate import FIXTURE, KEY_LABEL, generate

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "PROTOCOL.md").read_text()


def fixture() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(FIXTURE.read_text())
    return loaded


def vectors() -> dict[str, bytes]:
    return {v["name"]: bytes.fromhex(v["hex"]) for v in fixture()["vectors"]}


DAMAGE = {
    "status request, FCS damaged": FrameError(NakReason.BAD_FCS, 0x0123456789ABCDF1, 19),
    "status request cut to 16 bytes, damaged": FrameError(
        NakReason.TRUNCATED, 0x0123456789ABCDF2, 16
    ),
}


@covers("s-escape-encode", "s-escape-decode", "s-nak-id")
def test_every_vector_decodes_and_reencodes_byte_for_byte() -> None:
    for name, wire in vectors().items():
        if "damaged" in name:
            assert FrameDecoder().feed(wire) == [DAMAGE[name]], name
            continue
        frame = decode_frame(wire)
        if "control bytes escaped" in name:  # another framer's choice: same frame
            assert encode_frame(frame) != wire and b"\x7d\x2a" in wire
            continue
        assert encode_frame(frame) == wire, name


def test_vectors_mean_what_they_say() -> None:
    v = vectors()
    info_req, info = decode_frame(v["info request"]), decode_frame(v["info response"])
    assert (info_req.type, info_req.command) == (FrameType.REQUEST, Command.INFO)
    assert (info.type, info.status, info.request_id) == (
        FrameType.RESPONSE,
        Status.OK,
        info_req.request_id,
    )
    device_key = KeyPair.from_seed(hashlib.sha256(KEY_LABEL.encode()).digest())
    assert codec.decode(info.body)["public_key"] == device_key.public_key
    issue = decode_frame(v["issue response"])
    body = codec.decode(issue.body)
    payload = pycose_verify(body["document"], device_key.public_key)
    assert payload["total"] == 1500 + 195 and payload["counter"] == 1 and payload["training"]
    naks = {"NAK, bad FCS": "status request, FCS damaged"}
    naks["NAK, truncated"] = "status request cut to 16 bytes, damaged"
    for name, cause in naks.items():
        nak, damaged = decode_frame(v[name]), DAMAGE[cause]
        reason = damaged.reason
        assert (nak.type, nak.command, nak.status, nak.body) == (FrameType.NAK, 0, reason, b"")
        assert nak.request_id == damaged.request_id
    hello_req = decode_frame(v["hello request, control bytes escaped"])
    hello = decode_frame(v["hello response"])
    assert hello.request_id == hello_req.request_id == 0x7E7D0A0D11130003
    assert b"\x7d\x5e\x7d\x5d\x0a\x0d\x11\x13" in v["hello response"]  # only 7E, 7D escaped
    assert codec.decode(hello.body)["max_body"] == 65535


def test_the_code_still_produces_the_vectors() -> None:
    assert generate() == fixture()


def test_the_protocol_document_carries_the_vectors() -> None:
    flat = re.sub(r"\s+", "", DOC)
    for name, wire in vectors().items():
        assert wire.hex() in flat, f"{name} is missing or different in docs/PROTOCOL.md"


def test_every_command_and_status_is_documented() -> None:
    for command in Command:
        assert re.search(rf"`0x{command.value:02X}` \| {command.name} ", DOC), command
    for status in Status:
        assert re.search(rf"`0x{status.value:02X}` \| {status.name} ", DOC), status
    for frame_type in FrameType:
        assert f"`0x{frame_type.value:02X}` {frame_type.name}" in DOC, frame_type
