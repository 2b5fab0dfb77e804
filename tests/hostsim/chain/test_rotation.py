"""The chain's side of pinning: certificates name the chain, rotations come endorsed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cbor2
import pytest

from device.protocol import trust
from device.protocol.keys import KeyPair
from device.protocol.status import DeviceError, Status
from device.receipts import verify_ack
from hostsim.chain.errors import ChainError, Code
from hostsim.chain.node import Chain
from tests.hostsim.chain.conftest import Api, DeviceSim
from tests.hostsim.chain.test_ledger import submit_cbor

pytestmark = pytest.mark.asyncio

TAXPAYER = {"tax_id": "91350100M000100Y43", "name": "Shop"}


async def consortium(api: Api) -> dict[str, Any]:
    async with api.session.get(
        api.url("/v1/consortium"), headers={"Accept": "application/cbor"}
    ) as resp:
        assert resp.status == 200
        answer: dict[str, Any] = cbor2.loads(await resp.read())
        return answer


def ack(device: DeviceSim, body: dict[str, Any]) -> int:
    synced_through: int = device.fw.carry_out(device.fw.ack_sync(body))["synced_through"]
    return synced_through


async def test_a_rotation_is_accepted_with_the_chains_endorsements(
    api: Api, device: DeviceSim
) -> None:
    await api.register(device)
    first = (await submit_cbor(api, device.issue(2)))["results"]
    epoch1 = await consortium(api)
    assert epoch1["epoch"] == 1 and epoch1["endorsements"] == []
    assert (
        ack(device, {"consortium": epoch1["consortium"], "receipts": [first[-1]["receipt"]]}) == 2
    )
    admin = {"Authorization": f"Bearer {api.chain.bureau.admin_token}"}
    async with api.session.post(api.url("/v1/consortium/rotate"), headers=admin) as resp:
        assert resp.status == 201, await resp.text()
    epoch2 = await consortium(api)
    assert epoch2["epoch"] == 2 and len(epoch2["endorsements"]) == 4
    receipts = [r["receipt"] for r in (await submit_cbor(api, device.issue(1)))["results"]]
    offer = {"consortium": epoch2["consortium"], "receipts": receipts}
    with pytest.raises(DeviceError) as err:
        verify_ack(device.fw, offer)  # without the endorsements: not the lineage
    assert err.value.status == Status.CONSORTIUM_INVALID
    assert ack(device, {**offer, "endorsements": epoch2["endorsements"]}) == 3
    assert device.fw.credentials.consortium is not None
    assert device.fw.credentials.consortium.epoch == 2


async def test_the_rotation_is_kept_across_a_restart(chain: Chain, tmp_path: Path) -> None:
    from hostsim.chain import rotation

    rotated = await rotation.rotate(chain)
    await chain.engine.stop()
    chain.close()
    again = Chain.open(tmp_path / "chain", training=True)
    try:
        assert trust.open_consortium(again.consortium, again.bureau.public_key).epoch == 2
        assert again.consortium == rotated.raw and len(again.endorsements) == 4
        trust.check_rotation(again.consortium, again.endorsements, _epoch_one(again))
    finally:
        again.close()


def _epoch_one(chain: Chain) -> trust.ConsortiumKeys:
    raw = trust.issue_consortium(
        trust.TRAINING_BUREAU, chain.chain_id, 1, chain.nodes.public_keys, True, 0
    )
    return trust.open_consortium(raw, chain.bureau.public_key)


async def test_a_certificate_names_its_chain(tmp_path: Path) -> None:
    chain = Chain.open(tmp_path / "prod", training=False)
    try:
        key = KeyPair.generate()
        csr = trust.make_csr(key, TAXPAYER, False, 0)
        cert = chain.bureau.open_certificate(
            chain.bureau.certify(chain.bureau.check_csr(csr), 1, 0, chain.chain_id)
        )
        assert cert.chain_id == chain.chain_id
        # A certificate the bureau issued for another of its chains is not registered here.
        other = chain.bureau.certify(chain.bureau.check_csr(csr), 1, 0, "taxctl-elsewhere")
        with pytest.raises(ChainError) as err:
            await chain.acts.register(None, other, [], 0.1)
        assert err.value.code == Code.BAD_CERTIFICATE
        assert cert.device_id not in chain.engine.state.devices
    finally:
        chain.close()
