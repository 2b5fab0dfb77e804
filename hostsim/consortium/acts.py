"""Bureau acts and buyer claims on a consortium node: logged first, carried out on apply.

The embedded chain's `Acts` checks a request against its tip and moves the
tip at once. A consortium node must not: its tip would then differ from the
other nodes' until the block. So the node that receives a request puts it in
the etcd log as it came (`{"act": name, "args": ...}`), and every node runs
the embedded chain's own `Acts` method when the log reaches it — with the
block's time as the clock, hence the same certificate serials, segments and
refusals everywhere. The receiving node answers once the block is final.
"""

from __future__ import annotations

from typing import Any

from device.protocol import trust
from hostsim.chain.acts import Acts
from hostsim.chain.errors import ChainError, Code
from hostsim.consortium import decided, epochs
from hostsim.consortium.engine import ConsortiumEngine


class ConsortiumActs(Acts):
    def __init__(self, engine: ConsortiumEngine) -> None:
        super().__init__(engine)
        self.consortium = engine
        self.reserved: dict[str, int] = {}  # the last number granted per code, not yet applied
        engine.state_listeners.append(self._state_replaced)

    def _state_replaced(self) -> None:
        self.state = self.engine.state

    # --- what the API calls: log the request ----------------------------------------------

    async def register(
        self,
        csr: bytes | None,
        certificate: bytes | None,
        segments: list[bytes],
        wait: float,
        enrolment_code: object = None,
    ) -> dict[str, Any]:
        """A CSR is certified here, once, by the node holding the bureau's key; the log
        carries the certificate (and the enrolment code's hash), never the CSR."""
        digest = None
        if csr is not None and certificate is None:
            certificate, digest = decided.certify(self, csr, enrolment_code)
            csr = None
        args = {"csr": csr, "certificate": certificate, "segments": segments, "enrolment": digest}
        out: dict[str, Any] = await self.consortium.request_act("register", args, wait)
        return out

    async def issue_enrolment(self, body: dict[str, Any], wait: float) -> dict[str, Any]:
        """An enrolment code issued here (the bureau's node), kept by every node."""
        issued, args = decided.enrolment(self, body)
        await self.consortium.request_act("enrolment", args, wait)
        return issued.body()

    async def allocate(self, device_id: str, count: int, wait: float) -> trust.Segment:
        args = {"device_id": device_id, "count": count}
        seg: trust.Segment = await self.consortium.request_act("allocate", args, wait)
        return seg

    async def allocate_signed(self, device_id: str, raw: bytes, wait: float) -> trust.Segment:
        """Granted here, once, by the node holding the bureau's key; the log carries the
        request and the bureau-signed segment."""
        args = {"device_id": device_id, "raw": raw, "segment": decided.grant(self, device_id, raw)}
        seg: trust.Segment = await self.consortium.request_act("grant", args, wait)
        return seg

    async def record_segment(self, device_id: str, raw: bytes, wait: float) -> trust.Segment:
        args = {"device_id": device_id, "raw": raw}
        seg: trust.Segment = await self.consortium.request_act("record_segment", args, wait)
        return seg

    async def revoke(self, device_id: str, reason: str, wait: float) -> int:
        args = {"device_id": device_id, "reason": reason}
        height: int = await self.consortium.request_act("revoke", args, wait)
        return height

    async def claim(
        self, code: str, number: str, buyer_id: str, buyer_tax_id: str, wait: float
    ) -> dict[str, Any]:
        args = {"code": code, "number": number, "buyer_id": buyer_id, "tax_id": buyer_tax_id}
        out: dict[str, Any] = await self.consortium.request_act("claim", args, wait)
        return out

    async def confirm_credit(
        self, code: str, number: str, buyer_id: str, amount: object, wait: float
    ) -> dict[str, Any]:
        if type(amount) is not int:
            raise ChainError(Code.BAD_REQUEST, "amount is the credit's size in fen, an integer > 0")
        args = {"code": code, "number": number, "buyer_id": buyer_id, "amount": amount}
        out: dict[str, Any] = await self.consortium.request_act("confirm_credit", args, wait)
        return out

    async def new_epoch(self, raw: bytes, wait: float) -> dict[str, Any]:
        """Log the bureau's epoch + 1; its outcome once every node switched to it."""
        out: dict[str, Any] = await self.consortium.request_act(
            epochs.EPOCH_ACT, {"consortium": raw}, wait
        )
        return out

    # --- what the orderer calls: carry it out ---------------------------------------------

    async def run(self, name: str, args: dict[str, Any]) -> Any:
        """The outcome of a logged request, the same on every node: the embedded chain's
        answer, or the ChainError it refused with (malformed arguments included)."""
        try:
            return await self._dispatch(name, args)
        except ChainError as exc:
            return exc
        except (KeyError, TypeError, ValueError, AttributeError):
            return ChainError(Code.BAD_REQUEST, f"a logged {name[:40]} request is malformed")

    async def _dispatch(self, name: str, a: dict[str, Any]) -> Any:
        base = Acts
        if name == "register":
            return await decided.apply_register(self, a)
        if name == "enrolment":
            return decided.apply_enrolment(self, _bytes(a["record"]), _bytes(a["signature"]))
        if name == "allocate":  # training only: every node holds the training bureau's key
            return await base.allocate(self, _text(a["device_id"]), _int(a["count"]), 0)
        if name == "grant":
            return await decided.apply_grant(
                self, _text(a["device_id"]), _bytes(a["raw"]), _bytes(a["segment"])
            )
        if name == "record_segment":
            return await base.record_segment(self, _text(a["device_id"]), _bytes(a["raw"]), 0)
        if name == "revoke":
            return await base.revoke(self, _text(a["device_id"]), _text(a["reason"]), 0)
        if name == "claim":
            return await base.claim(
                self, _text(a["code"]), _text(a["number"]), a["buyer_id"], a["tax_id"], 0
            )
        if name == "confirm_credit":
            return await base.confirm_credit(
                self, _text(a["code"]), _text(a["number"]), a["buyer_id"], a["amount"], 0
            )
        if name == epochs.EPOCH_ACT:
            return epochs.check_next(self.consortium, a["consortium"])
        raise ChainError(Code.BAD_REQUEST, "the log names an act this node does not know")

    def final_answer(self, name: str, outcome: Any) -> Any:
        """The answer once the act's block is final (a registration's height is known then)."""
        if name == "register" and isinstance(outcome, dict):
            device = self.state.devices.get(str(outcome.get("device_id")))
            if device is not None:
                return {**outcome, "registered_height": device.registered_height}
        return outcome


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("not text")
    return value


def _bytes(value: object) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError("not bytes")
    return value


def _int(value: object) -> int:
    if type(value) is not int:
        raise TypeError("not an integer")
    return value
