"""Chain throughput: documents committed per second, submitted in batches of 500.

The chain runs as its own process (`taxctl hostsim chain --training`), this
process is a loopback client: D training devices (real firmware, in
process) sign their documents up front, then one submitter per device
posts them in order in batches of 500 (CBOR), all devices concurrently,
asking for compact receipts as syncd does.
The figure is documents committed (receipt received) per second of wall
time; the ceiling is the raw Ed25519 verify rate of one core, measured in
the same run — every document costs the chain at least one verification.

    python bench/chain.py [--devices 8] [--per-device 5000] [--batch 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import cbor2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ceilings import ed25519_verify_rate
from device.app import open_device
from device.limits import Limits
from tests.helpers import spawn

# As syncd asks: each block's header and signatures once per answer, not per receipt.
COMPACT = {"receipts": "compact"}

INVOICE = {
    "buyer": {"name": "ACME Trading", "tax_id": "91350100M000100Y43"},
    "items": [
        {"name": "Green tea 250g", "quantity": "2", "unit_price": 4500, "tax_rate_bp": 1300},
        {"name": "Delivery", "quantity": "1", "unit_price": 800, "tax_rate_bp": 900},
    ],
}


def make_documents(
    root: Path, devices: int, per_device: int
) -> list[tuple[bytes, list[bytes], list[bytes]]]:
    out = []
    for d in range(devices):
        fw = open_device(
            root / f"device{d}",
            training=True,
            limits=Limits(offline_seconds=10**9, offline_amount=10**15),
        )
        docs: list[bytes] = []
        while len(docs) < per_device:
            for _ in range(min(1000, per_device - len(docs))):
                fw.issue(INVOICE)
            docs.extend(row.doc for row in fw.commit_pending().documents)
        assert fw.credentials.cert is not None
        out.append((fw.credentials.cert.raw, fw.credentials.live_segments(), docs))
        fw.journal.close()
    return out


async def drive(
    urls: list[str],
    devices: list[tuple[bytes, list[bytes], list[bytes]]],
    batch: int,
    params: dict[str, str] = COMPACT,
    timeout: float = 120,
) -> dict[str, float]:
    """Register every device at the first URL, then each device submits its documents in
    batches to a URL of its own (round robin), all devices at once."""
    headers = {"Content-Type": "application/cbor", "Accept": "application/cbor"}
    latencies: list[float] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        for cert, segments, _ in devices:
            body = cbor2.dumps({"certificate": cert, "segments": segments})
            async with session.post(f"{urls[0]}/v1/devices", data=body, headers=headers) as resp:
                assert resp.status == 201, await resp.text()

        async def one_device(url: str, docs: list[bytes]) -> int:
            committed = 0
            for start in range(0, len(docs), batch):
                t0 = time.perf_counter()
                body = cbor2.dumps({"documents": docs[start : start + batch]})
                async with session.post(
                    f"{url}/v1/documents", data=body, headers=headers, params=params
                ) as resp:
                    assert resp.status == 200, await resp.text()
                    result = cbor2.loads(await resp.read())
                latencies.append(time.perf_counter() - t0)
                committed += sum(r["status"] == "committed" for r in result["results"])
            return committed

        started = time.perf_counter()
        counts = await asyncio.gather(
            *(one_device(urls[i % len(urls)], d[2]) for i, d in enumerate(devices))
        )
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "committed": sum(counts),
        "seconds": elapsed,
        "batch_p50_ms": 1000 * latencies[len(latencies) // 2],
        "batch_p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--per-device", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--workers", type=int, default=None, help="chain validation processes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="taxctl-bench-chain-") as tmp:
        root = Path(tmp)
        devices = make_documents(root, args.devices, args.per_device)
        verify_rate = ed25519_verify_rate(2.0)
        command = ["hostsim", "chain", "--data", str(root / "ledger"), "--listen", "127.0.0.1:0"]
        command += ["--training"]
        if args.workers is not None:
            command += ["--workers", str(args.workers)]
        chain = spawn(command)
        try:
            figures = asyncio.run(drive([chain.ready["url"]], devices, args.batch))
        finally:
            chain.stop()
    rate = figures["committed"] / figures["seconds"]
    print(
        json.dumps(
            {
                "benchmark": "chain",
                "documents": figures["committed"],
                "batch": args.batch,
                "devices": args.devices,
                "seconds": round(figures["seconds"], 3),
                "committed_per_s": round(rate),
                "batch_p50_ms": round(figures["batch_p50_ms"], 1),
                "batch_p99_ms": round(figures["batch_p99_ms"], 1),
                "ceiling_ed25519_verify_per_s_1core": round(verify_rate),
                "ratio_to_ceiling": round(rate / verify_rate, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
