"""Held gaps, idempotency, receipts a device accepts, restart, tampering, quorum, claims, 查验."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any

import cbor2
import pytest

from device.protocol.document import parse_document
from device.receipts import verify_ack
from hostsim.chain.node import Chain
from hostsim.chain.verify import LedgerCorrupt, verify_ledger
from tests.hostsim.chain.conftest import BUYER_TAX_ID, Api, DeviceSim, b64

pytestmark = pytest.mark.asyncio


async def submit_cbor(api: Api, docs: list[bytes], **params: Any) -> dict[str, Any]:
    async with api.session.post(
        api.url("/v1/documents"),
        data=cbor2.dumps({"documents": docs}),
        headers={"Content-Type": "application/cbor", "Accept": "application/cbor"},
        params=params,
    ) as resp:
        assert resp.status == 200
        return cbor2.loads(await resp.read())


async def test_held_documents_commit_when_the_gap_fills(api: Api, device: DeviceSim) -> None:
    await api.register(device)
    docs = device.issue(6)
    ahead = await api.submit(docs[3:])
    assert [r["status"] for r in ahead] == ["held"] * 3
    assert [r["status"] for r in await api.submit(docs[3:4])] == ["held"]  # asked again
    _, dev = await api.call("GET", f"/v1/devices/{device.device_id}", headers=api.audit)
    assert dev["held"] == [4, 5, 6] and dev["last_counter"] == 0
    filled = await api.submit(docs[:3])
    assert [r["status"] for r in filled] == ["committed"] * 3
    await asyncio.sleep(0.05)
    again = await api.submit(docs)
    assert [r["status"] for r in again] == ["duplicate"] * 6
    assert (
        api.chain.ledger.db.execute("SELECT count(*) FROM txs WHERE type='document'").fetchone()[0]
        == 6
    )
    assert api.chain.ledger.db.execute("SELECT count(*) FROM held").fetchone()[0] == 0


async def test_receipts_unlock_the_device(api: Api, device: DeviceSim) -> None:
    await api.register(device)
    docs = device.issue(50)
    assert device.fw.backlog.count == 50
    body = await submit_cbor(api, docs)
    receipts = [r["receipt"] for r in body["results"]]
    assert all(r["status"] == "committed" for r in body["results"])
    async with api.session.get(
        api.url("/v1/consortium"), headers={"Accept": "application/cbor"}
    ) as resp:
        consortium = cbor2.loads(await resp.read())["consortium"]
    offer = {"consortium": consortium, "receipts": receipts[-1:]}
    ack = verify_ack(device.fw, offer)
    assert ack.synced_through == 50 and ack.consortium == consortium
    device.fw.carry_out(device.fw.ack_sync(offer))
    assert device.fw.backlog.count == 0 and device.fw.synced_through == 50
    # the same batch again: the original receipts, byte for byte
    again = await submit_cbor(api, docs)
    assert [r["status"] for r in again["results"]] == ["duplicate"] * 50
    assert [r["receipt"] for r in again["results"]] == receipts


async def test_compact_receipts_put_back_are_the_full_receipts(api: Api, device: DeviceSim) -> None:
    from syncd.chain_client import ChainClient, blocks_by_height, full_receipt

    await api.register(device)
    docs = device.issue(30)
    full = [(await submit_cbor(api, part))["results"] for part in (docs[:10], docs[10:])]
    receipts = [r["receipt"] for part in full for r in part]
    heights = {r["header"]["height"] for r in receipts}
    assert len(heights) == 2  # two batches, two blocks
    compact = await submit_cbor(api, docs, receipts="compact")
    assert [r["status"] for r in compact["results"]] == ["duplicate"] * 30
    assert all("header" not in r["receipt"] for r in compact["results"])
    assert [b["header"]["height"] for b in compact["blocks"]] == sorted(heights)
    blocks = blocks_by_height(compact["blocks"])
    assert [full_receipt(r["receipt"], blocks) for r in compact["results"]] == receipts
    # what syncd's client hands on, and the device accepts
    client = ChainClient([api.url("")])
    try:
        results = await client.submit(docs)
    finally:
        await client.close()
    assert [r.receipt for r in results] == receipts
    async with api.session.get(
        api.url("/v1/consortium"), headers={"Accept": "application/cbor"}
    ) as resp:
        consortium = cbor2.loads(await resp.read())["consortium"]
    ack = {"consortium": consortium, "receipts": [results[-1].receipt]}
    assert verify_ack(device.fw, ack).synced_through == 30


async def test_batches_spread_over_several_blocks_come_back_final(
    api: Api, device: DeviceSim
) -> None:
    """A submission waits until its last queued document is final: blocks are cut in order."""
    await api.register(device)
    api.chain.engine.block_max = 4
    docs = device.issue(10)
    # overlapping: documents 3..6 may be pending from the other submission
    first, second = await asyncio.gather(api.submit(docs[:7]), api.submit(docs[3:]))
    for results in (first, second):
        assert {r["status"] for r in results} <= {"committed", "duplicate"}, results
    assert len({r["receipt"]["header"]["height"] for r in first + second}) >= 3


async def test_same_document_twice_in_one_batch(api: Api, device: DeviceSim) -> None:
    await api.register(device)
    [raw] = device.issue(1)
    results = await api.submit([raw, raw])
    assert {r["status"] for r in results} <= {"committed", "duplicate"}
    assert results[0]["receipt"] == results[1]["receipt"]
    assert (
        api.chain.ledger.db.execute("SELECT count(*) FROM txs WHERE type='document'").fetchone()[0]
        == 1
    )


async def test_restart_resumes_and_verify_catches_tampering(
    tmp_path: Path, device: DeviceSim
) -> None:
    data = tmp_path / "ledger"
    chain = Chain.open(data, training=True, block_interval=0.001)
    chain.engine.start()
    await chain.acts.register(None, device.certificate, device.segments, 5)
    docs = device.issue(30)
    for start in range(0, 30, 10):
        results = await chain.engine.submit(docs[start : start + 10], 5)
        assert {r.status for r in results} == {"committed"}
    # held across a restart
    later = device.issue(3)
    assert {r.status for r in await chain.engine.submit(later[1:], 5)} == {"held"}
    height = chain.engine.height
    await chain.engine.stop()
    chain.close()

    chain = Chain.open(data, training=True, block_interval=0.001)
    chain.engine.start()
    try:
        assert chain.engine.height == height
        assert chain.engine.state.devices[device.device_id].last_counter == 30
        assert chain.engine.state.held_count() == 2
        assert {r.status for r in await chain.engine.submit(docs, 5)} == {"duplicate"}
        assert {r.status for r in await chain.engine.submit(later[:1], 5)} == {"committed"}
        await asyncio.sleep(0.05)
        assert chain.engine.state.devices[device.device_id].last_counter == 33
    finally:
        await chain.engine.stop()
        chain.close()
    report = verify_ledger(data)
    assert report.documents == 33 and report.devices == 1

    def flip(sql_select: str, sql_update: str) -> None:
        db = sqlite3.connect(data / "ledger.sqlite")
        key, blob = db.execute(sql_select).fetchone()
        changed = bytearray(blob)
        changed[len(changed) // 2] ^= 0x01
        db.execute(sql_update, (bytes(changed), key))
        db.commit()
        db.close()

    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(data, copy)
    # one byte of a document in block 3
    flip(
        "SELECT hash, body FROM txs WHERE type='document' AND height=3 LIMIT 1",
        "UPDATE txs SET body=? WHERE hash=?",
    )
    with pytest.raises(LedgerCorrupt) as caught:
        verify_ledger(data)
    assert caught.value.height == 3
    # one byte of a block header
    flip(
        "SELECT height, header FROM blocks WHERE height=2",
        "UPDATE blocks SET header=? WHERE height=?",
    )
    data = copy
    flip(
        "SELECT height, header FROM blocks WHERE height=2",
        "UPDATE blocks SET header=? WHERE height=?",
    )
    with pytest.raises(LedgerCorrupt) as caught:
        verify_ledger(copy)
    assert caught.value.height == 2


async def test_partition_stalls_finality_and_heal_commits_exactly_once(
    api: Api, device: DeviceSim
) -> None:
    nodes = api.chain.nodes
    await api.register(device)
    docs = device.issue(40)
    nodes.partition(["enterprise3"])  # 3 of 4 reachable: quorum holds
    first = await api.submit(docs[:10])
    assert [r["status"] for r in first] == ["committed"] * 10
    assert all(len(r["receipt"]["signatures"]) == 3 for r in first)
    nodes.partition(["enterprise2"])  # 2 of 4: no quorum
    height = api.chain.engine.height
    stalled = await api.submit(docs[10:], wait="0.3")
    assert [r["status"] for r in stalled] == ["pending"] * 30
    again = await api.submit(docs[10:], wait="0.1")  # resubmitted while stalled
    assert [r["status"] for r in again] == ["pending"] * 30
    assert api.chain.engine.height == height
    _, health = await api.call("GET", "/v1/health")
    assert health["finalizing"] is False and health["mempool"] == 30
    nodes.heal()
    done = await api.submit(docs[10:])
    assert {r["status"] for r in done} <= {"committed", "duplicate"}
    rows = api.chain.ledger.db.execute(
        "SELECT counter FROM txs WHERE type='document' ORDER BY counter"
    ).fetchall()
    assert [r[0] for r in rows] == list(range(1, 41))


async def test_claim_once_and_verification(api: Api, device: DeviceSim) -> None:
    await api.register(device)
    [raw, other] = device.issue(2, buyer_tax_id=BUYER_TAX_ID)
    await api.submit([raw, other])
    doc = parse_document(raw)
    token = api.chain.bureau.admin_token
    status, buyer = await api.call(
        "POST",
        "/v1/buyers",
        json={"tax_id": BUYER_TAX_ID, "name": "Buyer Co"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert status == 201, buyer
    status, stranger = await api.call(
        "POST",
        "/v1/buyers",
        json={"tax_id": "91110000MA0000001H", "name": "Stranger"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert status in (201, 400), stranger
    path = f"/v1/invoices/{doc.code}/{doc.number}/claim"
    status, body = await api.call("POST", path)
    assert (status, body["error"]["code"]) == (401, "unauthorized")
    status, body = await api.call(
        "POST", path, headers={"Authorization": f"Bearer {buyer['api_key']}"}
    )
    assert status == 201 and body["claimed_by"] == buyer["buyer_id"], body
    status, body = await api.call(
        "POST", path, headers={"Authorization": f"Bearer {buyer['api_key']}"}
    )
    assert (status, body["error"]["code"]) == (409, "already_claimed")
    assert buyer["buyer_id"] in body["error"]["message"]
    assert body["error"]["claimed_by"] == buyer["buyer_id"]
    _, inv = await api.call("GET", f"/v1/invoices/{doc.code}/{doc.number}", headers=api.audit)
    assert [h["event"] for h in inv["history"]] == ["issued", "claimed"]
    assert inv["claimed_by"] == buyer["buyer_id"]
    date = doc.payload["issued_at"][:10]
    good = {"code": doc.code, "number": doc.number, "date": date, "check_code": doc.check_code}
    status, body = await api.call("POST", "/v1/verify", json=good)
    assert status == 200 and body["result"] == "authentic" and body["training"] is True
    status, body = await api.call(
        "POST", "/v1/verify", json={**good, "check_code": doc.check_code[-6:]}
    )
    assert body["result"] == "authentic"
    status, body = await api.call("POST", "/v1/verify", json={**good, "check_code": "0" * 20})
    assert body["result"] == "mismatch" and body["mismatched"] == ["check_code"]
    status, body = await api.call("POST", "/v1/verify", json={**good, "date": "2020-01-01"})
    assert body["result"] == "mismatch" and body["mismatched"] == ["date"]
    status, body = await api.call("POST", "/v1/verify", json={**good, "number": "00009999"})
    assert body["result"] == "not_found"
    status, body = await api.call(
        "GET", "/v1/verify", params={"c": doc.code, "n": doc.number, "d": date, "t": str(doc.total)}
    )
    assert body["result"] == "authentic"
    status, body = await api.call("POST", "/v1/verify", json={"code": "12"})
    assert (status, body["error"]["code"]) == (400, "bad_request")


async def test_production_registration_by_csr(tmp_path: Path) -> None:
    from device.protocol import trust
    from device.protocol.keys import KeyPair

    chain = Chain.open(tmp_path / "prod", training=False, block_interval=0.001)
    chain.engine.start()
    try:
        key = KeyPair.generate()
        taxpayer = {"name": "Shop", "tax_id": BUYER_TAX_ID}
        csr = trust.make_csr(key, taxpayer, False, 0)
        code = chain.acts.enrolments.issue(dict(taxpayer)).code
        out = await chain.acts.register(csr, None, [], 5, code)
        again = await chain.acts.register(csr, None, [], 5)
        assert again["certificate"] == out["certificate"]
        cert = trust.open_certificate(out["certificate"], chain.bureau.public_key)
        assert cert.taxpayer == taxpayer and not cert.training

        def request(count: int) -> bytes:
            return trust.make_segment_request(
                key, cert.device_id, count, time.time(), secrets.token_bytes(16)
            )

        one = await chain.acts.allocate_signed(cert.device_id, request(1000), 5)
        two = await chain.acts.allocate_signed(cert.device_id, request(1000), 5)
        assert (one.start, one.end, two.start, two.end) == (1, 1000, 1001, 2000)
        training_csr = trust.make_csr(KeyPair.generate(), taxpayer, True, 0)
        from hostsim.chain.errors import ChainError

        with pytest.raises(ChainError) as caught:
            await chain.acts.register(training_csr, None, [], 5)
        assert caught.value.code == "bad_csr"
        with pytest.raises(ChainError) as caught:
            await chain.acts.register(None, b64(b"x").encode(), [], 5)
        assert caught.value.code == "bad_certificate"
    finally:
        await chain.engine.stop()
        chain.close()
    assert verify_ledger(tmp_path / "prod").blocks >= 3


async def test_credentials_with_any_bytes_are_refused_not_crashed(
    api: Api, device: DeviceSim
) -> None:
    """Found by the API fuzz: a bearer token holding non-ASCII or undecodable bytes."""
    await api.register(device)
    for token in ("é", "\udcfd\udce9"):
        header = {
            "Authorization": f"Bearer {token}".encode("utf-8", "surrogateescape").decode("latin-1")
        }
        status, body = await api.call(
            "POST", f"/v1/devices/{device.device_id}/revoke", json={"reason": "x"}, headers=header
        )
        assert (status, body["error"]["code"]) == (401, "unauthorized")
        status, body = await api.call(
            "POST", "/v1/invoices/000000000000/00000000/claim", headers=header
        )
        assert (status, body["error"]["code"]) == (401, "unauthorized")


async def test_number_lookup_uses_the_primary_key(tmp_path: Path) -> None:
    """A batch's numbers are looked up by key: a scan would grow with the ledger."""
    from hostsim.chain.ledger import Ledger

    ledger = Ledger(tmp_path / "chain")
    try:
        ledger.db.executemany(
            "INSERT INTO invoices (code, number, hash, device_id, counter, kind, seller_tax_id,"
            " total, issued_at, check_code, training) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            [
                ("3100", f"{n:08d}", bytes([n]) * 32, "D", n, "invoice", "T", 100, "", "0", 1)
                for n in range(1, 6)
            ],
        )
        statements: list[str] = []
        ledger.db.set_trace_callback(statements.append)
        wanted = [("3100", "00000002"), ("3100", "00000009"), ("3100", "00000005")]
        found = ledger.number_holders(wanted)
        ledger.db.set_trace_callback(None)
        assert found == {
            ("3100", "00000002"): bytes([2]) * 32,
            ("3100", "00000005"): bytes([5]) * 32,
        }
        assert statements
        for sql in statements:  # the trace shows the statement with its parameters bound
            plan = " | ".join(row[3] for row in ledger.db.execute("EXPLAIN QUERY PLAN " + sql))
            assert "SCAN invoices" not in plan and "SEARCH i USING PRIMARY KEY" in plan, plan
    finally:
        ledger.close()


@pytest.mark.parametrize(
    "taxpayer",
    [
        {"name": "Shop\u202eGNIRT", "tax_id": BUYER_TAX_ID},  # a bidi override
        {"name": "Shop\nTOTAL 0.00", "tax_id": BUYER_TAX_ID},  # a faked receipt line
        {"name": "S" * 60_000, "tax_id": BUYER_TAX_ID},
        {"name": "\u0301Shop", "tax_id": BUYER_TAX_ID},  # a leading combining mark
        {"name": "Shop", "tax_id": BUYER_TAX_ID, **{f"x{i}": "y" * 100 for i in range(500)}},
    ],
    ids=["bidi", "newline", "60k", "combining", "extra-keys"],
)
async def test_the_bureau_certifies_only_a_name_a_device_would_print(
    tmp_path: Path, taxpayer: dict[str, str]
) -> None:
    """The bureau put whatever taxpayer a CSR named into the certificate it signed: names
    with controls, bidi overrides or 60,000 characters, and any extra fields, copied into
    every certificate, its ledger row and GET /v1/devices/{id}. A device refuses such a
    certificate; the bureau now refuses the CSR, with the device's own name rule."""
    from device.protocol import trust
    from device.protocol.keys import KeyPair
    from hostsim.chain.errors import ChainError

    chain = Chain.open(tmp_path / "prod", training=False, block_interval=0.001)
    chain.engine.start()
    try:
        csr = trust.make_csr(KeyPair.generate(), taxpayer, False, 0)
        with pytest.raises(ChainError) as caught:
            await chain.acts.register(csr, None, [], 5)
        assert caught.value.code == "bad_csr"
        assert len(caught.value.message) < 300
        assert not chain.engine.state.devices
    finally:
        await chain.engine.stop()
        chain.close()


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1}',
        "[1, 2]",
        '[{"node_id": "bureau"}]',
        '[{"node_id": "b", "seed": 5}]',
        "[" * 100_000,
    ],
    ids=["a map", "numbers", "no seed", "seed a number", "nested 100,000 deep"],
)
async def test_a_damaged_node_key_file_is_one_setup_error(tmp_path: Path, text: str) -> None:
    """nodes.json was read with json.loads and indexing: a list of numbers (TypeError), an
    entry without its seed (KeyError) or deep nesting (RecursionError) was a traceback at
    every start, not the one-line setup error a damaged data directory gets."""
    from hostsim.chain.node import ChainSetupError
    from hostsim.chain.quorum import NODES_FILE

    Chain.open(tmp_path / "data", training=True).close()
    (tmp_path / "data" / NODES_FILE).write_text(text)
    with pytest.raises(ChainSetupError) as caught:
        Chain.open(tmp_path / "data", training=True).close()
    assert len(str(caught.value)) < 300
