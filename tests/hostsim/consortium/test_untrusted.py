"""What a consortium node reads from etcd and from peers is hostile input: bounded
decoding, typed fields, a specific refusal, and nothing stops the node."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import cbor2
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from device.protocol import codec
from hostsim.consortium import log as records
from hostsim.consortium.etcd import MAX_ANSWER, Etcd, EtcdError

# value sharing (tags 28/29): a few bytes that would expand into a huge structure
BOMB = bytes.fromhex("d81c81d81c81d81d00")


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xff",
        cbor2.dumps([1, 2]),
        cbor2.dumps({"docs": "not a list"}),
        cbor2.dumps({"docs": [1, 2]}),
        cbor2.dumps({"act": 5, "args": {}}),
        BOMB,
        cbor2.dumps({"docs": [b"x"] * 200_000}),
    ],
)
def test_a_log_entry_that_is_not_ours_is_refused(raw: bytes) -> None:
    with pytest.raises(records.BadRecord):
        records.read_entry(raw)


@pytest.mark.parametrize(
    "value",
    [
        {"seq": 1, "from": 5, "to": 5, "time": "2026-12-01T00:00:00Z"},  # empty range
        {"seq": 1, "from": -1, "to": 5, "time": "2026-12-01T00:00:00Z"},
        {"seq": True, "from": 0, "to": 5, "time": "2026-12-01T00:00:00Z"},
        {"seq": 1, "from": 0, "to": 5, "time": "yesterday"},
        {"seq": 1, "from": 0, "to": 5},
    ],
)
def test_a_proposal_that_is_not_ours_is_refused(value: object) -> None:
    with pytest.raises(records.BadRecord):
        records.read_proposal(codec.encode(value))


def test_signature_final_and_watermark_records_are_typed() -> None:
    with pytest.raises(records.BadRecord):
        records.read_signature(codec.encode({"header": "text", "signature": b"x"}))
    with pytest.raises(records.BadRecord):
        records.read_final(codec.encode({"header": b"h", "signatures": {}}))
    with pytest.raises(records.BadRecord):
        records.read_watermark(codec.encode({"seq": 1, "rev": "2", "height": 3}))
    assert records.read_watermark(records.watermark_value(1, 2, 3)) == (1, 2, 3)


def test_a_batch_is_cut_into_entries_within_the_request_limit() -> None:
    raws = [bytes([i % 256]) * 300_000 for i in range(7)]
    entries = records.doc_entries(raws, [bytes([i]) * 32 for i in range(7)])
    assert len(entries) == 3
    for _, value in entries:
        assert len(value) <= records.MAX_ENTRY_BYTES + 64
    docs = [d for _, value in entries for d in records.read_entry(value).docs or []]
    assert docs == raws


# --- the etcd client against a hostile "etcd" ----------------------------------------------


@pytest_asyncio.fixture
async def hostile() -> AsyncIterator[tuple[Etcd, dict[str, bytes]]]:
    answers: dict[str, bytes] = {}

    async def answer(request: web.Request) -> web.StreamResponse:
        body = answers[request.path]
        if body == b"HUGE":
            resp = web.StreamResponse()
            await resp.prepare(request)
            chunk = b" " * (1 << 20)
            for _ in range(MAX_ANSWER // len(chunk) + 2):
                await resp.write(chunk)
            return resp
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/{tail:.*}", answer)
    server = TestServer(app)
    await server.start_server()
    client = Etcd([str(server.make_url("")).rstrip("/")], timeout=30)
    try:
        yield client, answers
    finally:
        await client.close()
        await server.close()


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        json.dumps({"kvs": "nope"}).encode(),
        json.dumps({"kvs": [{"key": "@@@", "value": ""}]}).encode(),
        json.dumps({"kvs": [{"key": "YQ==", "create_revision": "1e9"}]}).encode(),
        json.dumps({"kvs": [{"key": "YQ==", "create_revision": 1.5}]}).encode(),
        b"[" * 100 + b"]" * 100,
        b"HUGE",
    ],
)
async def test_a_malformed_etcd_answer_is_etcd_error(
    hostile: tuple[Etcd, dict[str, bytes]], body: bytes
) -> None:
    client, answers = hostile
    answers["/v3/kv/range"] = body
    with pytest.raises(EtcdError):
        await asyncio.wait_for(client.range(b"a", b"b"), 60)


async def test_a_failed_compare_without_its_read_is_etcd_error(
    hostile: tuple[Etcd, dict[str, bytes]],
) -> None:
    client, answers = hostile
    answers["/v3/kv/txn"] = json.dumps({"succeeded": False, "responses": []}).encode()
    with pytest.raises(EtcdError):
        await client.create(b"k", b"v")
