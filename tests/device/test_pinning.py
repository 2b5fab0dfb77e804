"""Pinning: a device accepts the consortia and receipts of one chain, and rotations of it.

The attack: a rogue host registers the printer on a second chain under the
same bureau root, uploads there and hands back that chain's receipts. The
old device took any bureau-signed consortium of equal epoch, so its
`synced_through` moved while the shop's chain held nothing.
"""

from __future__ import annotations

from typing import Any

import pytest

from device.protocol import trust
from device.protocol.keys import KeyPair
from device.protocol.status import DeviceError, Status
from tests.device.conftest import INVOICE, Harness, wide_limits
from tests.helpers import SigningConsortium

BUREAU = KeyPair.derive("pinning test bureau")
TAXPAYER = {"tax_id": "91350100M000100Y43", "name": "Shop"}


def journal(h: Harness) -> list[tuple[int, bytes]]:
    return h.fw.journal.documents(1, max_count=1000, max_bytes=10**9)


async def refused(h: Harness, status: Status, call: Any) -> DeviceError:
    before = h.snapshot()
    held = h.fw.credentials.consortium
    with pytest.raises(DeviceError) as err:
        await call
    assert err.value.status == status, err.value.text
    assert h.snapshot() == before
    assert h.fw.credentials.consortium == held
    return err.value


async def production(start: Any, chain_id: str | None = "shop-chain", **kw: Any) -> Harness:
    """A production device certified by BUREAU for `chain_id`, with a segment loaded."""
    h: Harness = await start(
        training=False, bureau_key=BUREAU.public_key, limits=wide_limits(), **kw
    )
    if h.fw.credentials.cert is None:
        csr = trust.open_csr((await h.client.csr(TAXPAYER))["csr"])
        now = h.clock.now()
        await h.client.load_cert(trust.issue_certificate(BUREAU, csr, 1, now, 5, chain_id))
        device_id = h.fw.settings.device_id
        segment = trust.issue_segment(BUREAU, device_id, "144031900110", 1, 1000, False, now)
        await h.client.load_segment(segment)
    return h


def chain(chain_id: str) -> SigningConsortium:
    return SigningConsortium(bureau=BUREAU, training=False, chain_id=chain_id)


async def test_second_chain_capture_is_refused(start: Any) -> None:
    h = await production(start)
    shop, rogue = chain("shop-chain"), chain("rogue-chain")
    for _ in range(3):
        await h.client.issue(INVOICE)
    await h.client.ack_sync(shop.receipts(journal(h)[:1], h.fw.settings.device_id), shop.raw)
    for _ in range(5):
        await h.client.issue(INVOICE)
    device_id = h.fw.settings.device_id
    # The rogue chain's consortium (same bureau, same epoch) with its receipts for 1..8.
    err = await refused(
        h,
        Status.CONSORTIUM_INVALID,
        h.client.ack_sync(rogue.receipts(journal(h), device_id), rogue.raw),
    )
    assert "shop-chain" in err.detail and "rogue-chain" in err.detail
    # Its receipts alone, against the held consortium: refused the same way.
    await refused(
        h, Status.CONSORTIUM_INVALID, h.client.ack_sync(rogue.receipts(journal(h), device_id))
    )
    assert h.fw.synced_through == 1
    # The shop's chain keeps working.
    done = await h.client.ack_sync(shop.receipts(journal(h)[2:3], device_id))
    assert done["synced_through"] == 3


async def test_a_new_device_refuses_another_chains_first_consortium(start: Any) -> None:
    h = await production(start)
    rogue = chain("rogue-chain")
    await h.client.issue(INVOICE)
    await refused(
        h,
        Status.CONSORTIUM_INVALID,
        h.client.ack_sync(rogue.receipts(journal(h), h.fw.settings.device_id), rogue.raw),
    )
    assert h.fw.credentials.consortium is None


async def test_a_training_device_pins_its_first_chain_across_restarts(start: Any) -> None:
    h: Harness = await start(limits=wide_limits())
    first, other = SigningConsortium(chain_id="chain-a"), SigningConsortium(chain_id="chain-b")
    await h.client.issue(INVOICE)
    device_id = h.fw.settings.device_id
    await h.client.ack_sync(first.receipts(journal(h), device_id), first.raw)
    await h.client.issue(INVOICE)
    await h.close()
    h = await start(state=h.state, clock=h.clock, limits=wide_limits())
    assert h.fw.credentials.chain_id == "chain-a"
    await refused(
        h,
        Status.CONSORTIUM_INVALID,
        h.client.ack_sync(other.receipts(journal(h), device_id), other.raw),
    )
    assert (await h.client.ack_sync(first.receipts(journal(h)[1:], device_id)))[
        "synced_through"
    ] == 2


def rotated(old: SigningConsortium) -> SigningConsortium:
    return SigningConsortium(
        bureau=old.bureau, training=old.training, chain_id=old.chain_id, epoch=old.epoch + 1
    )


def endorse(old: SigningConsortium, raw: bytes, signers: int) -> list[dict[str, Any]]:
    return [
        {"node_id": f"node{i}", "signature": trust.sign_rotation(old.nodes[i], raw)}
        for i in range(signers)
    ]


async def test_rotation_needs_the_current_quorum(start: Any) -> None:
    h = await production(start)
    old = chain("shop-chain")
    await h.client.issue(INVOICE)
    device_id = h.fw.settings.device_id
    await h.client.ack_sync(old.receipts(journal(h), device_id), old.raw)
    await h.client.issue(INVOICE)
    new = rotated(old)  # new node keys, epoch 2
    raw = new.raw
    receipts = new.receipts(journal(h)[1:], device_id)
    await refused(h, Status.CONSORTIUM_INVALID, h.client.ack_sync(receipts, raw))
    await refused(
        h, Status.CONSORTIUM_INVALID, h.client.ack_sync(receipts, raw, endorse(old, raw, 2))
    )
    # Endorsed by the new nodes themselves, or over other bytes: not the lineage.
    await refused(
        h, Status.CONSORTIUM_INVALID, h.client.ack_sync(receipts, raw, endorse(new, raw, 4))
    )
    await refused(
        h, Status.CONSORTIUM_INVALID, h.client.ack_sync(receipts, raw, endorse(old, old.raw, 4))
    )
    done = await h.client.ack_sync(receipts, raw, endorse(old, raw, 3))
    assert done["synced_through"] == 2
    assert h.fw.credentials.consortium is not None and h.fw.credentials.consortium.epoch == 2
    await h.close()
    h = await production(start, state=h.state, clock=h.clock)
    assert h.fw.credentials.consortium is not None and h.fw.credentials.consortium.epoch == 2


async def test_same_lower_and_skipped_epochs_are_refused(start: Any) -> None:
    h = await production(start)
    held = chain("shop-chain")
    held.epoch = 2
    await h.client.issue(INVOICE)
    device_id = h.fw.settings.device_id
    await h.client.ack_sync(held.receipts(journal(h), device_id), held.raw)
    lower, skipped = chain("shop-chain"), chain("shop-chain")
    skipped.epoch = 4
    for offered in (lower, skipped):
        raw = offered.raw
        await refused(
            h,
            Status.CONSORTIUM_INVALID,
            h.client.ack_sync(offered.receipts(journal(h), device_id), raw, endorse(held, raw, 4)),
        )
    same_epoch = chain("shop-chain")
    same_epoch.epoch = 2  # other node keys under the held epoch
    raw = same_epoch.raw
    await refused(
        h,
        Status.CONSORTIUM_INVALID,
        h.client.ack_sync(same_epoch.receipts(journal(h), device_id), raw, endorse(held, raw, 4)),
    )


def reattested(receipt: dict[str, Any], by: SigningConsortium) -> dict[str, Any]:
    """The receipt with its (unchanged) header signed by `by`'s nodes, as the chain hands
    out a block older than its current epoch."""
    header = receipt["header"]
    signatures = [
        {"node_id": f"node{i}", "signature": trust.sign_header(key, header)}
        for i, key in enumerate(by.nodes)
    ]
    return {**receipt, "signatures": signatures}


async def test_after_a_key_rotation_only_the_new_keys_count(start: Any) -> None:
    """The device holds one epoch: a pre-rotation receipt signed by the replaced keys is
    refused, the same block re-attested by the new keys is taken, and the new blocks too."""
    h = await production(start)
    old = chain("shop-chain")
    for _ in range(3):
        await h.client.issue(INVOICE)
    device_id = h.fw.settings.device_id
    docs = journal(h)
    await h.client.ack_sync(old.receipts(docs[:1], device_id), old.raw)
    before = old.receipts(docs[1:2], device_id)  # block 2, signed by the epoch-1 keys
    new = rotated(old)  # every node key replaced
    raw = new.raw
    await h.client.issue(INVOICE)
    fresh = new.receipts(journal(h)[3:], device_id)
    # Still at epoch 1: the new keys are no quorum of it.
    await refused(h, Status.RECEIPT_INVALID, h.client.ack_sync(fresh))
    done = await h.client.ack_sync(fresh[:1], raw, endorse(old, raw, 3))
    assert done["synced_through"] == 4
    assert h.fw.credentials.consortium is not None and h.fw.credentials.consortium.epoch == 2
    # Block 2's original receipt: its signers were replaced (perhaps stolen), refused.
    await refused(h, Status.RECEIPT_INVALID, h.client.ack_sync(before))
    # A receipt forged with the old keys for any height is refused the same way.
    await refused(h, Status.RECEIPT_INVALID, h.client.ack_sync(old.receipts(docs, device_id)))
    # The same block re-attested by the current nodes is valid.
    assert (await h.client.ack_sync([reattested(before[0], new)]))["synced_through"] == 4
