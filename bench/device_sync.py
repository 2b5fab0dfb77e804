"""The device's CPU per invoice, with and without syncd's traffic, in one process.

A DeviceServer runs on a port that only records what it sends, in this event loop; the
host is played by this script with no link in between. Issues come in bursts of a few
at a time; with sync traffic, each round also FETCHes pages of up to 60,000 bytes from
synced_through + 1, ACK_SYNCs a quorum-signed receipt for the highest counter fetched
(alone, or arriving behind the next burst) and now and then asks STATUS, as syncd
does. CPU is this thread's (minus what the host part spends making requests and
receipts) plus the journal thread's, per invoice.

    python bench/device_sync.py [--rounds 300] [--burst 1,6] [--behind 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.issue import REQUEST
from device.app import open_device
from device.limits import Limits
from device.protocol import codec
from device.protocol.commands import Command
from device.protocol.framing import Frame, FrameDecoder, FrameType
from device.server import DeviceServer
from tests.helpers import SigningConsortium

PAGE_BYTES = 60000


class RecordingPort:
    """The device's end of a link that keeps every frame sent and wakes who waits."""

    name = "bench"

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self._waiters: list[asyncio.Future[None]] = []

    async def read(self) -> bytes:
        await asyncio.Event().wait()
        return b""

    def write(self, data: bytes) -> None:
        self.sent.append(data)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_for(self, count: int) -> None:
        while len(self.sent) < count:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

    def close(self) -> None:
        pass


class Host:
    """Plays syncd and the tills: requests straight into the server; CPU it spends apart."""

    def __init__(self, server: DeviceServer, port: RecordingPort) -> None:
        self.server, self.port = server, port
        self.rid = 7 << 40
        self.own_cpu = 0.0  # this thread's CPU spent on the host's side

    def _frames(self, requests: list[tuple[Command, Any]]) -> list[Frame]:
        started = time.thread_time()
        frames = []
        for command, body in requests:
            self.rid += 1
            frames.append(Frame(FrameType.REQUEST, self.rid, int(command), 0, codec.encode(body)))
        self.own_cpu += time.thread_time() - started
        return frames

    async def send(self, requests: list[tuple[Command, Any]]) -> list[dict[str, Any]]:
        frames = self._frames(requests)
        first = len(self.port.sent)
        for frame in frames:
            self.server._on_request(frame)
        await self.port.wait_for(first + len(frames))
        started = time.thread_time()
        frames = [f for f in FrameDecoder().feed(b"".join(self.port.sent[first:]))]
        answers = [codec.decode(f.body) for f in frames if isinstance(f, Frame)]
        self.port.sent.clear()
        self.own_cpu += time.thread_time() - started
        return answers

    def receipt(self, chain: SigningConsortium, doc: tuple[int, bytes], device: str) -> Any:
        started = time.thread_time()
        made = chain.receipts([doc], device, other_leaves=20)
        self.own_cpu += time.thread_time() - started
        return made


def journal_cpu() -> float:
    thread = next(t for t in threading.enumerate() if t.name == "journal")
    assert thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


async def fetch_round(host: Host) -> list[tuple[int, bytes]]:
    """FETCH pages from synced_through + 1 until the journal's end, as syncd does."""
    docs: list[tuple[int, bytes]] = []
    nxt = 1  # the device starts at synced_through + 1 anyway
    while True:
        (page,) = await host.send([(Command.FETCH, {"from": nxt, "max_bytes": PAGE_BYTES})])
        if not page["documents"]:
            return docs
        docs += [(page["first"] + i, d) for i, d in enumerate(page["documents"])]
        nxt = page["first"] + len(page["documents"])


def ack_request(
    host: Host, chain: SigningConsortium, doc: tuple[int, bytes], device: str, first: bool
) -> tuple[Command, Any]:
    body: dict[str, Any] = {"receipts": host.receipt(chain, doc, device)}
    if first:
        body["consortium"] = chain.raw
    return Command.ACK_SYNC, body


async def measure(args: argparse.Namespace, sync: bool) -> dict[str, Any]:
    low, high = args.burst
    rng = random.Random(1)
    with tempfile.TemporaryDirectory(prefix="bench-device-sync-") as tmp:
        limits = Limits(offline_seconds=10**9, offline_amount=10**15)
        fw = open_device(Path(tmp) / "state", training=True, limits=limits)
        port = RecordingPort()
        server = DeviceServer(fw, port)
        writer = asyncio.create_task(server.writer.run())
        host, chain = Host(server, port), SigningConsortium()
        await host.send([(Command.ISSUE, REQUEST)] * 20)  # warm up
        device = fw.settings.device_id
        if sync:
            await host.send([ack_request(host, chain, (await fetch_round(host))[-1], device, True)])
        host.own_cpu, issued, acks = 0.0, 0, 0
        loop0, journal0, commits0 = (
            time.thread_time(),
            journal_cpu(),
            fw.since_start.document_commits,
        )
        behind: list[tuple[Command, Any]] = []  # an ACK_SYNC that goes behind the next burst
        for index in range(args.rounds):
            for _ in range(rng.randint(1, 3)):  # a few bursts between two sync rounds
                size = rng.randint(low, high)
                answers = await host.send([(Command.ISSUE, REQUEST)] * size + behind)
                assert all("error" not in answer for answer in answers), answers
                issued, behind = issued + size, []
            if sync:
                docs = await fetch_round(host)
                ack = ack_request(host, chain, docs[-1], device, False)
                acks += 1
                if rng.random() < args.behind:
                    behind = [ack]  # it arrives while the tills send the next burst
                else:
                    (answer,) = await host.send([ack])
                    assert answer["synced_through"] == docs[-1][0], answer
                if index % 10 == 0:
                    await host.send([(Command.STATUS, {})])
        loop = time.thread_time() - loop0 - host.own_cpu
        journal = journal_cpu() - journal0
        commits = fw.since_start.document_commits - commits0
        server.writer.stop()
        await writer
        server.writer.close()
        fw.close()
    return {
        "sync": sync,
        "invoices": issued,
        "invoices_per_ack": round(issued / acks, 1) if acks else None,
        "invoices_per_commit": round(issued / commits, 2),
        "acks_behind_a_burst": args.behind if sync else None,
        "device_cpu_us_per_invoice": round((loop + journal) / issued * 1e6, 1),
        "loop_us": round(loop / issued * 1e6, 1),
        "journal_us": round(journal / issued * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument(
        "--burst", type=lambda s: tuple(int(x) for x in s.split(",")), default=(1, 6)
    )
    parser.add_argument(
        "--behind", type=float, default=0.5, help="share of ACK_SYNCs sent behind a burst"
    )
    args = parser.parse_args()
    for sync in (False, True):
        print(json.dumps(asyncio.run(measure(args, sync))))


if __name__ == "__main__":
    main()
