"""The chain's CPU per document, in one process: a training chain (4 nodes) and its HTTP
API on loopback, fed batches of real signed documents as syncd sends them (CBOR,
compact receipts) by a raw-socket client whose own cost is a write and a read per batch.

Prints JSON: CPU microseconds per document (the whole process: chain and client) and
documents per second of wall time. `--profile FILE` writes a cProfile of the timed part.

    python bench/chain_cpu.py [--devices 4] [--per-device 2000] [--batch 32]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import cbor2
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.chain import make_documents
from hostsim.chain.api import build_app
from hostsim.chain.node import Chain
from hostsim.chain.server import GC_YOUNG_THRESHOLD

CBOR = "application/cbor"


def request_bytes(port: int, docs: list[bytes]) -> bytes:
    body = cbor2.dumps({"documents": docs})
    head = (
        f"POST /v1/documents?wait=5&receipts=compact HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\nContent-Type: {CBOR}\r\nAccept: {CBOR}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def post_all(port: int, requests: list[bytes]) -> list[bytes]:
    """One keep-alive connection, the batches in order; the answers' bodies."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = []
    for req in requests:
        writer.write(req)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head[:80]
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        answers.append(await reader.readexactly(length))
    writer.close()
    return answers


async def register(url: str, devices: list[tuple[bytes, list[bytes], list[bytes]]]) -> None:
    headers = {"Content-Type": CBOR, "Accept": CBOR}
    async with aiohttp.ClientSession() as session:
        for cert, segments, _ in devices:
            body = cbor2.dumps({"certificate": cert, "segments": segments})
            async with session.post(f"{url}/v1/devices", data=body, headers=headers) as resp:
                assert resp.status == 201, await resp.read()


async def run(args: argparse.Namespace, root: Path) -> dict[str, float]:
    devices = make_documents(root / "devices", args.devices, args.per_device)
    chain = Chain.open(root / "chain", training=True)
    chain.engine.start()
    writer_cpu = [0.0]
    write = chain.engine._write

    def timed_write(*parts: Any) -> None:  # the block writer's thread: not in a cProfile
        start = time.thread_time()
        write(*parts)
        writer_cpu[0] += time.thread_time() - start

    setattr(chain.engine, "_write", timed_write)  # noqa: B010 (a method on one object)
    runner = web.AppRunner(build_app(chain, verify_limit=None), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        await register(f"http://127.0.0.1:{port}", devices)
        plans = [
            [request_bytes(port, docs[s : s + args.batch]) for s in range(0, len(docs), args.batch)]
            for _, _, docs in devices
        ]
        profile = cProfile.Profile(time.thread_time) if args.profile else None
        cpu, wall = time.process_time(), time.perf_counter()
        if profile:
            profile.enable()
        answers = await asyncio.gather(*(post_all(port, plan) for plan in plans))
        if profile:
            profile.disable()
            profile.dump_stats(args.profile)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await runner.cleanup()
        await chain.engine.stop()
        chain.close()
    total = sum(len(docs) for _, _, docs in devices)
    committed = sum(
        r["status"] == "committed"
        for per_device in answers
        for raw in per_device
        for r in cbor2.loads(raw)["results"]
    )
    assert committed == total, (committed, total)
    return {
        "documents": total,
        "batch": args.batch,
        "devices": args.devices,
        "cpu_us_per_document": round(cpu / total * 1e6, 1),
        "block_writer_us_per_document": round(writer_cpu[0] / total * 1e6, 1),
        "blocks": chain.engine.height,
        "documents_per_second": round(total / wall),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--per-device", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--profile", help="write a cProfile of the timed part here")
    args = parser.parse_args()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)  # as `taxctl hostsim chain` runs
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(asyncio.run(run(args, Path(tmp)))))


if __name__ == "__main__":
    main()
