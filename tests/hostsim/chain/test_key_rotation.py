"""Node-key rotation: fresh keys sign from the next block, the old quorum endorsed them, the
ledger verifies each block with the epoch in force at its height, across a restart."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import cbor2
import pytest

from device.protocol import codec, trust
from device.protocol.status import DeviceError, Status
from device.receipts import verify_ack
from hostsim.chain import rotation
from hostsim.chain.ledger import Ledger
from hostsim.chain.node import Chain
from hostsim.chain.quorum import NEXT_FILE, NODES_FILE
from hostsim.chain.verify import LedgerCorrupt, verify_ledger
from tests.hostsim.chain.conftest import Api, DeviceSim
from tests.hostsim.chain.test_ledger import submit_cbor
from tests.hostsim.chain.test_rotation import ack, consortium

pytestmark = pytest.mark.asyncio


def seeds(directory: Path) -> dict[str, str]:
    entries = json.loads((directory / NODES_FILE).read_text())
    return {e["node_id"]: e["seed"] for e in entries}


def signers(chain: Chain, height: int) -> trust.ConsortiumKeys:
    """The newest epoch whose quorum signed the stored block at `height` (or fail)."""
    row = chain.ledger.block(height)
    assert row is not None
    header = codec.decode(row.header)
    for epoch in reversed(rotation.load_epochs(chain.ledger)):
        opened = trust.open_consortium(epoch.consortium, chain.bureau.public_key)
        try:
            trust.check_quorum(header, codec.decode(row.signatures), opened)
        except DeviceError:
            continue
        return opened
    raise AssertionError(f"no epoch on record signed block {height}")


def signed_with(chain: Chain, height: int, node_id: str, public_key: bytes) -> bool:
    """Whether `node_id`'s stored signature over the block verifies with `public_key`."""
    row = chain.ledger.block(height)
    assert row is not None
    header = codec.decode(row.header)
    sig = {s["node_id"]: s["signature"] for s in codec.decode(row.signatures)}[node_id]
    return trust.verify(public_key, trust.BLOCK_DOMAIN + trust.header_bytes(header), sig)


async def rotate(api: Api, body: Any = None) -> tuple[int, dict[str, Any]]:
    admin = {"Authorization": f"Bearer {api.chain.bureau.admin_token}"}
    kwargs: dict[str, Any] = {"headers": admin}
    if body is not None:
        kwargs["json"] = body
    return await api.call("POST", "/v1/consortium/rotate", **kwargs)


async def test_replaced_keys_sign_the_blocks_after_the_rotation(
    api: Api, device: DeviceSim
) -> None:
    chain = api.chain
    directory = chain.directory
    await api.register(device)
    before = (await submit_cbor(api, device.issue(2)))["results"]
    old_seeds = seeds(directory)
    old_keys = dict(chain.nodes.public_keys)
    status, body = await rotate(api, {"replace": ["enterprise2"]})
    assert status == 201, body
    assert body["epoch"] == 2 and body["replaced"] == ["enterprise2"]
    assert body["endorsed_by"] == 4 and body["from_height"] == chain.engine.height + 1
    new_seeds = seeds(directory)
    assert new_seeds["enterprise2"] != old_seeds["enterprise2"]
    assert {n: s for n, s in new_seeds.items() if n != "enterprise2"} == {
        n: s for n, s in old_seeds.items() if n != "enterprise2"
    }
    assert stat.S_IMODE(os.stat(directory / NODES_FILE).st_mode) == 0o600
    assert not (directory / NEXT_FILE).exists()
    epoch2 = await consortium(api)
    opened = trust.open_consortium(epoch2["consortium"], chain.bureau.public_key)
    assert opened.nodes["enterprise2"] != old_keys["enterprise2"]
    # The old (epoch 1) keys endorsed it: a device holding epoch 1 can move.
    epoch1 = trust.open_consortium(_epoch(chain, 0), chain.bureau.public_key)
    assert epoch1.nodes == old_keys
    trust.check_rotation(epoch2["consortium"], epoch2["endorsements"], epoch1)

    after = (await submit_cbor(api, device.issue(2)))["results"]
    old_height = before[0]["receipt"]["header"]["height"]
    new_height = after[0]["receipt"]["header"]["height"]
    assert old_height < body["from_height"] <= new_height
    assert signed_with(chain, old_height, "enterprise2", old_keys["enterprise2"])
    assert signed_with(chain, new_height, "enterprise2", opened.nodes["enterprise2"])
    assert not signed_with(chain, new_height, "enterprise2", old_keys["enterprise2"])
    assert signers(chain, new_height).epoch == 2
    assert verify_ledger(directory).blocks == chain.engine.height


def _epoch(chain: Chain, index: int) -> bytes:
    return rotation.load_epochs(chain.ledger)[index].consortium


async def test_a_device_moves_to_the_new_keys_and_takes_old_and_new_receipts(
    api: Api, device: DeviceSim
) -> None:
    """The device holds one consortium: receipts of pre-rotation blocks come re-attested
    by the current nodes; the originals, signed by keys since replaced, are refused."""
    await api.register(device)
    first = (await submit_cbor(api, device.issue(2)))["results"]
    epoch1 = await consortium(api)
    assert ack(device, {"consortium": epoch1["consortium"], "receipts": [first[0]["receipt"]]})
    old_receipt = first[1]["receipt"]
    status, _ = await rotate(api, {"replace": "all"})
    assert status == 201
    epoch2 = await consortium(api)
    new = (await submit_cbor(api, device.issue(1)))["results"][0]["receipt"]
    with pytest.raises(DeviceError) as err:  # epoch 1 held: new keys are no quorum of it
        verify_ack(device.fw, {"receipts": [new]})
    assert err.value.status == Status.RECEIPT_INVALID
    offer = {"consortium": epoch2["consortium"], "endorsements": epoch2["endorsements"]}
    assert ack(device, {**offer, "receipts": [new]}) == 3
    held = device.fw.credentials.consortium
    assert held is not None and held.epoch == 2
    # The original receipt of document 2: its signers were all replaced.
    with pytest.raises(DeviceError) as err:
        verify_ack(device.fw, {"receipts": [old_receipt]})
    assert err.value.status == Status.RECEIPT_INVALID
    # Submitted again, document 2 is a duplicate: its receipt is re-attested, and taken.
    row = device.fw.journal.document(2)
    assert row is not None
    again = (await submit_cbor(api, [row.doc]))["results"][0]
    assert again["status"] == "duplicate"
    assert again["receipt"]["header"] == old_receipt["header"]
    assert verify_ack(device.fw, {"receipts": [again["receipt"]]}).synced_through == 3
    status, tx = await api.call("GET", f"/v1/tx/{first[1]['hash'].hex()}", headers=api.audit)
    assert status == 200, tx


async def test_the_rotation_and_its_keys_survive_a_restart(chain: Chain, tmp_path: Path) -> None:
    device = DeviceSim(tmp_path / "device")
    try:
        await chain.acts.register(None, device.certificate, device.segments, 2.0)
        assert all(r.status == "committed" for r in await chain.engine.submit(device.issue(2), 2))
        await rotation.rotate(chain, ["bureau", "enterprise1"])
        assert all(r.status == "committed" for r in await chain.engine.submit(device.issue(2), 2))
        keys = dict(chain.nodes.public_keys)
        height = chain.engine.height
        await chain.engine.stop()
        chain.close()
        assert verify_ledger(tmp_path / "chain").blocks == height
        again = Chain.open(tmp_path / "chain", training=True, block_interval=0.005)
        again.engine.start()
        try:
            assert again.nodes.public_keys == keys
            assert (
                again.engine.blocks.current_from
                == rotation.load_epochs(again.ledger)[1].from_height
            )
            results = await again.engine.submit(device.issue(1), 2)
            assert results[0].status == "committed"
            assert signers(again, again.engine.height).epoch == 2
            # A block from before the rotation is handed out signed by the current nodes.
            block = again.engine.block(1)
            current = trust.open_consortium(again.consortium, again.bureau.public_key)
            trust.check_quorum(block.header, block.signatures, current)
        finally:
            await again.engine.stop()
            again.close()
        assert verify_ledger(tmp_path / "chain").blocks == height + 1
    finally:
        device.close()


async def test_no_rotation_without_the_old_quorum(api: Api, device: DeviceSim) -> None:
    chain = api.chain
    await api.register(device)
    before = (seeds(chain.directory), chain.consortium, chain.ledger.get_meta("consortium_epochs"))
    chain.nodes.partition(["enterprise1", "enterprise2"])  # 2 of 4 reachable, 3 must endorse
    status, body = await rotate(api, {"replace": ["enterprise3"]})
    assert status == 503 and body["error"]["code"] == "unavailable", body
    after = (seeds(chain.directory), chain.consortium, chain.ledger.get_meta("consortium_epochs"))
    assert after == before and not (chain.directory / NEXT_FILE).exists()
    chain.nodes.heal()
    # Nor can a rotation record carry fewer endorsements than the old quorum: verify says so.
    status, _ = await rotate(api, {"replace": ["enterprise3"]})
    assert status == 201
    await submit_cbor(api, device.issue(1))
    epochs = rotation.load_epochs(chain.ledger)
    short = [e.record() for e in epochs]
    short[1]["endorsements"] = short[1]["endorsements"][:2]
    with chain.ledger.transaction():
        chain.ledger.set_meta(rotation.EPOCHS_META, cbor2.dumps(short))
    with pytest.raises(LedgerCorrupt) as err:
        verify_ledger(chain.directory)
    assert "endorsed by 2 current nodes, 3 needed" in str(err.value)


async def test_rotate_refuses_an_unknown_node_and_a_bad_body(api: Api) -> None:
    for body in ({"replace": ["nobody"]}, {"replace": 3}, {"nodes": "all"}):
        status, answer = await rotate(api, body)
        assert status == 400 and answer["error"]["code"] == "bad_request", answer
    assert trust.open_consortium(api.chain.consortium, api.chain.bureau.public_key).epoch == 1


async def test_a_crash_inside_a_rotation_keeps_keys_and_ledger_in_step(
    chain: Chain, tmp_path: Path
) -> None:
    """Staged keys the ledger never recorded are dropped; recorded ones are promoted."""
    directory = chain.directory
    old = seeds(directory)
    keys = chain.nodes.replace(["enterprise1"])
    chain.nodes.stage(directory, keys)  # crash before the ledger recorded the new epoch
    await chain.engine.stop()
    chain.close()
    again = Chain.open(directory, training=True)
    assert seeds(directory) == old and not (directory / NEXT_FILE).exists()
    again.engine.start()
    await rotation.rotate(again, ["enterprise1"])
    new = seeds(directory)
    await again.engine.stop()
    again.close()
    # Crash after the ledger recorded it, before the rename: the old file is back in place.
    (directory / NODES_FILE).rename(directory / NEXT_FILE)
    with (directory / NODES_FILE).open("w") as handle:
        json.dump([{"node_id": n, "seed": s} for n, s in old.items()], handle)
    third = Chain.open(directory, training=True)
    try:
        assert seeds(directory) == new and not (directory / NEXT_FILE).exists()
    finally:
        third.close()
    ledger = Ledger(directory)
    try:
        assert len(rotation.load_epochs(ledger)) == 2
    finally:
        ledger.close()


async def test_rotating_twice_in_a_row_still_verifies(chain: Chain, device: DeviceSim) -> None:
    await chain.acts.register(None, device.certificate, device.segments, 2.0)
    await chain.engine.submit(device.issue(1), 2)
    await rotation.rotate(chain, ["enterprise1"])
    await rotation.rotate(chain, ["enterprise2", "enterprise3"])
    await chain.engine.submit(device.issue(1), 2)
    assert signers(chain, chain.engine.height).epoch == 3
    assert verify_ledger(chain.directory).blocks == chain.engine.height
