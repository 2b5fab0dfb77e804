"""SEGMENT_REQUEST: the device signs a request for numbers with its key, for the chain.

Refused without a certificate and for a count out of 1..100000; a read (nothing
durable changes); a fresh nonce each time, signed by the device key with its id
as the key id, at the device's clock."""

from __future__ import annotations

from typing import Any

from device.protocol import codec, cose, trust
from device.protocol.document import format_utc
from device.protocol.keys import KeyPair
from device.protocol.status import Status
from tests.device.conftest import Harness, wide_limits
from tests.device.test_refusals import refused


async def test_segment_request_is_signed_by_the_device_and_changes_nothing(start: Any) -> None:
    bureau = KeyPair.generate()
    h: Harness = await start(training=False, bureau_key=bureau.public_key, limits=wide_limits())
    await refused(h, Status.UNREGISTERED, h.client.segment_request(10))
    csr = await h.client.csr({"name": "Tea House", "tax_id": "91350100M000100Y43"})
    await h.client.load_cert(trust.issue_certificate(bureau, trust.open_csr(csr["csr"]), 1, 0, 1))
    for count in (0, trust.SEGMENT_REQUEST_MAX + 1):
        await refused(h, Status.BAD_REQUEST, h.client.segment_request(count))
    await refused(h, Status.BAD_REQUEST, h.client.request(0x33, {}))
    before = h.snapshot()
    first, second = await h.client.segment_request(500), await h.client.segment_request(500)
    assert h.snapshot() == before
    device_id = h.fw.settings.device_id
    payloads = []
    for raw in (first, second):
        envelope = cose.decode_sign1(raw)
        assert envelope.kid == device_id.encode() and envelope.verify(h.fw.key.public_key)
        payloads.append(codec.decode_canonical(envelope.payload))
    assert payloads[0]["nonce"] != payloads[1]["nonce"]
    assert {k: v for k, v in payloads[0].items() if k != "nonce"} == {
        "type": "segment_request",
        "device_id": device_id,
        "count": 500,
        "at": format_utc(h.clock.now()),
    }
    assert len(payloads[0]["nonce"]) == trust.SEGMENT_NONCE_SIZE
