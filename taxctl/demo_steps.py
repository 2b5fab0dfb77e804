"""The demo's steps, each one a thing a shop, a buyer or a fraudster does."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Any

from device.journal import export
from device.protocol import codec, cose
from hostsim.audit import chain_documents, compare
from hostsim.pos.mix import MixSettings
from hostsim.pos.till import Acknowledged, Tills, TillSettings
from syncd.posclient import PosClient
from taxctl.demo_report import Progress, Tally
from taxctl_base.processes import Child, all_online, http, wait_status

# The sales mix's mean invoice total is about 6,200 yuan: this offline limit lets a
# printer sell roughly `invoices` sales while the chain is away before it refuses.
MEAN_SALE_FEN = 620_000
DRAIN_TIMEOUT = 60.0
OFFLINE_LIMIT_CODE = "OFFLINE_AMOUNT_LIMIT"


class DemoShop:
    """The shop `taxctl demo` runs: a chain, printers and syncd as child processes."""

    def __init__(self, root: Path, devices: int, invoices: int) -> None:
        self.root = root
        self.invoices = invoices
        self.names = [f"device-{n}" for n in range(1, devices + 1)]
        self.children: list[Child] = []
        self.device_ids: list[str] = []
        self.public_keys: dict[str, bytes] = {}
        self.acks: list[Acknowledged] = []
        self._seed = 0

    # --- processes -------------------------------------------------------------------------

    def _child(self, name: str, args: list[str]) -> Child:
        logs = self.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        child = Child(name, args, logs / f"{name}.log")
        self.children.append(child)
        return child

    def start(self) -> None:
        chain_args = ["hostsim", "chain", "--data", str(self.root / "chain")]
        chain = self._child(
            "chain", [*chain_args, "--listen", "127.0.0.1:0", "--training", "--faults"]
        )
        self.chain_url, self.admin_url = chain.ready["url"], chain.ready["admin_url"]
        self.admin_token = Path(chain.ready["admin_token_file"]).read_text().strip()
        print(f"1. chain: {chain.ready['nodes']} consortium nodes at {self.chain_url}")
        limit = self.invoices * MEAN_SALE_FEN
        for name in self.names:
            device = self._child(
                name,
                [
                    "device",
                    "run",
                    "--state",
                    str(self.root / name),
                    "--link",
                    str(self.root / f"{name}.tty"),
                    "--training",
                    "--offline-amount",
                    str(limit),
                ],
            )
            self.device_ids.append(device.ready["device_id"])
            print(
                f"2. printer {device.ready['device_id']} on virtual serial port"
                f" {self.root / name}.tty (offline limit {limit / 100:,.0f} yuan)"
            )
        syncd_args = ["syncd", "run", "--state", str(self.root / "syncd")]
        for name in self.names:
            syncd_args += ["--device", str(self.root / f"{name}.tty")]
        syncd_args += ["--chain", self.chain_url, "--api", "127.0.0.1:0", "--log-level", "warning"]
        self.api = self._child("syncd", syncd_args).ready["url"]
        self.pos = PosClient(self.api)  # the POS API as POS software uses it
        wait_status(self.api, all_online, "printers online")
        print(f"3. sync daemon: POS API at {self.api}\n")

    def stop(self) -> None:
        if hasattr(self, "pos"):
            self.pos.close()
        for child in reversed(self.children):
            child.stop()
        self.children.clear()

    def _status(self) -> dict[str, Any]:
        return self.pos.status().raw

    # --- selling ---------------------------------------------------------------------------

    def _sell(self, per_device: dict[str, int], rate: float = 0.0) -> dict[str, Any]:
        """Sell on each printer at once; the tills' reports by device id."""
        settings = []
        for device_id, count in per_device.items():
            self._seed += 1
            settings.append(
                TillSettings(
                    api=self.api,
                    count=count,
                    concurrency=2,
                    rate=rate,
                    seed=self._seed,
                    devices=(device_id,),
                    mix=MixSettings(credit_share=0.05, retry_share=0.1),
                )
            )

        async def all_tills() -> list[Any]:
            return await asyncio.gather(*(Tills(s).run() for s in settings))

        reports = asyncio.run(all_tills())
        for report in reports:
            self.acks += report.acknowledged
        return dict(zip(per_device, reports, strict=True))

    def online(self, tally: Tally) -> None:
        reports = self._sell({d: self.invoices for d in self.device_ids}, rate=50.0)
        issued = sum(len(r.acknowledged) for r in reports.values())
        tally.issued += issued
        refused = sum(sum(r.refused.values()) for r in reports.values())
        tally.expect("every online sale issued", refused == 0, reports)
        first = min(self.acks, key=lambda a: a.counter)
        print(f"4. the tills made {issued} sales while the chain was reachable; the first:\n")
        doc = self.pos.reprint(first.counter, device=first.device_id)
        print("\n".join("   " + line for line in (doc.receipt_text or "").splitlines()))
        self._drain(tally, "   on the chain")

    def offline(self, tally: Tally) -> None:
        assert http("POST", f"{self.admin_url}/admin/faults", {"mode": "refuse"})[0] == 200
        print("\n5. the chain is now unreachable (connection refused); the shop keeps selling")
        waiting = set(self.device_ids)
        offline: dict[str, int] = dict.fromkeys(self.device_ids, 0)
        for _ in range(10 * self.invoices):
            if not waiting:
                break
            reports = self._sell(dict.fromkeys(sorted(waiting), 1))
            for device_id, report in reports.items():
                offline[device_id] += len(report.acknowledged)
                if report.refused:
                    code = next(iter(report.refused))
                    tally.limited.append(code)
                    waiting.discard(device_id)
                    print(
                        f"   {device_id}: {offline[device_id]} sales signed offline, then"
                        f" {code}: {report.messages[code]}"
                    )
        tally.expect("every printer reached its offline limit", not waiting, sorted(waiting))
        tally.expect(
            "the limit hit is the offline amount",
            set(tally.limited) == {OFFLINE_LIMIT_CODE},
            tally.limited,
        )
        tally.issued_offline = sum(offline.values())
        tally.issued += tally.issued_offline

    def heal(self, tally: Tally) -> None:
        # The chain answers again but cannot finalize a block yet (its nodes partitioned):
        # an invoice signed offline is not on the chain, and 查验 checks the printer's
        # signature on the receipt's QR instead.
        nodes = http("POST", f"{self.admin_url}/admin/heal", {})[1]["nodes"]
        assert http("POST", f"{self.admin_url}/admin/partition", {"nodes": nodes})[0] == 200
        assert http("DELETE", f"{self.admin_url}/admin/faults")[0] == 200
        last = max(self.acks, key=lambda a: (a.device_id, a.counter))
        qr = self._receipt_qr(last)
        print("\n6. the chain answers again; 查验 of a receipt signed offline, before upload:")
        self._offline_check(tally, qr, "not_yet_uploaded")
        assert http("POST", f"{self.admin_url}/admin/heal", {})[0] == 200
        print("   the chain finalizes again: syncd uploads the backlog")
        self._drain(tally, "documents on the chain")
        self._offline_check(tally, qr, "authentic")
        reports = self._sell(dict.fromkeys(self.device_ids, 1))
        again = sum(len(r.acknowledged) for r in reports.values())
        tally.expect("printers issue again once synced", again == len(self.device_ids), reports)
        tally.issued += again
        print(f"   offline limits lifted by the chain's receipts: {again} more sale(s) issued")
        self._drain(tally, "   on the chain")

    def _receipt_qr(self, ack: Acknowledged) -> str:
        return str(self.pos.reprint(ack.counter, device=ack.device_id).qr)

    def _offline_check(self, tally: Tally, qr: str, expected: str) -> None:
        _, answer = http("POST", f"{self.chain_url}/v1/verify", {"payload": qr})
        result = answer.get("result")
        tally.expect(f"查验 of the signed QR says {expected}", result == expected, answer)
        extra = f", upload by {answer.get('upload_by')}" if result == "not_yet_uploaded" else ""
        print(f"   {answer.get('code')}/{answer.get('number')}: {result}{extra}")

    def _drain(self, tally: Tally, label: str) -> None:
        progress = Progress(label)
        issued: dict[str, int] = {}
        for ack in self.acks:
            issued[ack.device_id] = max(issued.get(ack.device_id, 0), ack.counter)
        started = time.monotonic()
        deadline = started + DRAIN_TIMEOUT
        while True:
            devices = self._status()["devices"]
            # syncd reads the printers' counters now and then: the tills know the latest
            total = sum(
                max(d.get("counter", 0), issued.get(d.get("device_id"), 0)) for d in devices
            )
            done = sum(d.get("synced_through", 0) for d in devices)
            progress.show(done, total)
            if done == total:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"not synced after {DRAIN_TIMEOUT:.0f} s: {devices}")
            time.sleep(0.1)
        progress.end(done, total, time.monotonic() - started)
        tally.synced = done

    # --- buyers ----------------------------------------------------------------------------

    def verify_and_claim(self, tally: Tally) -> None:
        print("\n7. buyers verify (查验) and claim invoices")
        invoices = [a for a in self.acks if a.kind == "invoice"][:5]
        claimed = 0
        for ack in invoices:
            # the auditor reads the invoice for the demo; a buyer has the receipt in hand
            url = f"{self.chain_url}/v1/invoices/{ack.code}/{ack.number}"
            _, row = http("GET", url, token=self.admin_token)
            doc = row["document"]
            query = {
                "code": ack.code,
                "number": ack.number,
                "date": doc["issued_at"][:10],
                "check_code": doc["check_code"][-6:],
            }
            _, answer = http("POST", f"{self.chain_url}/v1/verify", query)
            tally.expect("查验 says authentic", answer.get("result") == "authentic", answer)
            tally.verified += answer.get("result") == "authentic"
            tax_id = (doc.get("buyer") or {}).get("tax_id")
            line = f"   {ack.code}/{ack.number} {ack.total / 100:>10,.2f}  {answer['result']}"
            if tax_id and claimed < 3:
                line += self._claim(tally, ack, doc["buyer"])
                claimed += 1
            print(line)

    def _claim(self, tally: Tally, ack: Acknowledged, buyer: dict[str, str]) -> str:
        _, enrolled = http(
            "POST",
            f"{self.chain_url}/v1/buyers",
            {"tax_id": buyer["tax_id"], "name": buyer["name"]},
            token=self.admin_token,
        )
        url = f"{self.chain_url}/v1/invoices/{ack.code}/{ack.number}/claim"
        first, _ = http("POST", url, {}, token=enrolled["api_key"])
        tally.expect("the buyer's claim is accepted", first == 201, first)
        tally.claimed += first == 201
        second, again = http("POST", url, {}, token=enrolled["api_key"])
        code = (again.get("error") or {}).get("code")
        refused = second == 409 and code == "already_claimed"
        tally.expect_refusal("second claim", "a second claim is refused", refused, again)
        return f"; claimed by {buyer['name']}; claimed again: {code}"

    # --- a fraudster -----------------------------------------------------------------------

    def forge_and_replay(self, tally: Tally) -> None:
        print("\n8. a fraudster tries the chain")
        ack = next(a for a in self.acks if a.kind == "invoice")
        url = f"{self.chain_url}/v1/invoices/{ack.code}/{ack.number}"
        _, row = http("GET", url, token=self.admin_token)
        genuine = base64.b64decode(row["cose_sign1"])
        sign1 = cose.decode_sign1(genuine)
        payload = codec.decode(sign1.payload)
        # Another buyer's name and tax id on a genuine invoice, to claim it: same signature.
        payload["buyer"] = {"name": "Fraudster Ltd.", "tax_id": "91110000600037341L"}
        forged = cose.assemble(codec.encode_ordered(payload), sign1.signature, sign1.kid)
        result = self._submit(forged)
        refused = result["status"] == "rejected" and result.get("code") == "bad_signature"
        tally.expect_refusal("forged document", "a forged document is rejected", refused, result)
        print(
            f"   {ack.code}/{ack.number} with another buyer written in:"
            f" {result['status']} ({result.get('code')})"
        )

        result = self._submit(genuine)
        height = (result.get("receipt") or {}).get("header", {}).get("height")
        replayed = result["status"] == "duplicate" and height == row["height"]
        tally.expect_refusal(
            "replayed document", "a replayed document gets its original receipt", replayed, result
        )
        print(
            f"   the genuine document sent again: {result['status']},"
            f" the original receipt (block {height}), no second copy"
        )

        query = {"code": ack.code, "number": ack.number, "date": row["document"]["issued_at"][:10]}
        _, answer = http("POST", f"{self.chain_url}/v1/verify", {**query, "check_code": "000000"})
        wrong = answer.get("result") == "mismatch"
        tally.expect_refusal(
            "made-up check code", "查验 with a made-up check code says mismatch", wrong, answer
        )
        print(f"   查验 with a made-up check code: {answer.get('result')}")

    def _submit(self, raw: bytes) -> dict[str, Any]:
        body = {"documents": [base64.b64encode(raw).decode()]}
        status, answer = http("POST", f"{self.chain_url}/v1/documents", body)
        if status != 200:
            raise RuntimeError(f"the chain answered {status}: {answer}")
        return dict(answer["results"][0])

    # --- audit -----------------------------------------------------------------------------

    def audit(self, tally: Tally) -> None:
        print("\n9. audit: every printer's journal against the chain")
        on_chain: set[tuple[str, int]] = set()
        for name, device_id in zip(self.names, self.device_ids, strict=True):
            journal = [(row.counter, row.doc) for row in export(self.root / name)]
            chain = chain_documents(self.chain_url, device_id, self.admin_token)
            _, info = http(
                "GET", f"{self.chain_url}/v1/devices/{device_id}", token=self.admin_token
            )
            report = compare(device_id, journal, chain, bytes.fromhex(info["public_key"]))
            tally.lost += len(report.lost) + len(report.altered)
            tally.duplicated += len(report.duplicated)
            tally.expect(f"{device_id}'s documents chain and verify", not report.broken, report)
            tally.expect(
                f"{device_id} has nothing unknown on the chain", not report.unknown, report
            )
            on_chain |= {(device_id, counter) for counter, _ in chain}
            print(
                f"   {device_id}: journal {report.journal}, chain {report.on_chain},"
                f" lost {len(report.lost)}, duplicated {len(report.duplicated)}"
            )
        unacked = [a for a in self.acks if (a.device_id, a.counter) not in on_chain]
        tally.lost += len(unacked)
        print(f"   {given_on_chain(len(self.acks), unacked)}")

    def verify_ledger(self) -> None:
        from hostsim.chain.verify import verify_ledger

        report = verify_ledger(self.root / "chain")
        print(
            f"   ledger re-checked offline: {report.blocks} blocks, {report.documents} documents,"
            " every hash, Merkle root and quorum signature good"
        )


def given_on_chain(given: int, missing: list[Acknowledged]) -> str:
    """The audit's last line, true either way: all the tills' documents are on the chain,
    or which are not (the first few, by device and counter)."""
    if not missing:
        return f"every one of the {given} documents the tills were given is on the chain"
    named = ", ".join(f"{a.device_id} #{a.counter}" for a in missing[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    return (
        f"{len(missing)} of the {given} documents the tills were given are not on the chain:"
        f" {named}{more}"
    )
