"""The chain as users run it: a real process, fault injection over its admin port,
kill -9 in the middle of commits, and `chain verify` from the command line."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers import Process, run_taxctl, spawn
from tests.hostsim.chain.conftest import DeviceSim, b64

pytestmark = pytest.mark.asyncio


class ChainProcess:
    def __init__(self, data: Path, port: int = 0) -> None:
        self.data = data
        self.proc: Process = spawn(
            [
                "hostsim",
                "chain",
                "--data",
                str(data),
                "--listen",
                f"127.0.0.1:{port}",
                "--training",
                "--faults",
                "--block-interval-ms",
                "5",
            ],
            stderr=data.parent / "chain.log",
        )
        self.url = self.proc.ready["url"]
        self.admin = self.proc.ready["admin_url"]
        self.port = int(self.url.rsplit(":", 1)[1])


@pytest.fixture
def chain_proc(tmp_path: Path) -> Iterator[ChainProcess]:
    proc = ChainProcess(tmp_path / "ledger")
    yield proc
    proc.proc.stop()


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with session.post(url, json=body) as resp:
        return resp.status, await resp.json()


async def register(session: aiohttp.ClientSession, url: str, sim: DeviceSim) -> None:
    status, body = await post(
        session,
        f"{url}/v1/devices",
        {"certificate": b64(sim.certificate), "segments": [b64(s) for s in sim.segments]},
    )
    assert status == 201, body


async def submit(
    session: aiohttp.ClientSession, url: str, docs: list[bytes]
) -> list[dict[str, Any]]:
    status, body = await post(session, f"{url}/v1/documents", {"documents": [b64(d) for d in docs]})
    assert status == 200, body
    return body["results"]


def committed_counters(data: Path) -> list[int]:
    db = sqlite3.connect(data / "ledger.sqlite")
    try:
        rows = db.execute(
            "SELECT counter FROM txs WHERE type='document' ORDER BY counter"
        ).fetchall()
    finally:
        db.close()
    return [r[0] for r in rows]


async def test_faults_lose_and_duplicate_nothing(
    chain_proc: ChainProcess, device: DeviceSim
) -> None:
    url, admin = chain_proc.url, chain_proc.admin
    docs = device.issue(60)
    async with aiohttp.ClientSession() as s:
        await register(s, url, device)
        # 503 for two requests, then normal
        assert (await post(s, f"{admin}/admin/faults", {"mode": "unavailable", "count": 2}))[
            0
        ] == 200
        for _ in range(2):
            status, body = await post(s, f"{url}/v1/documents", {"documents": [b64(docs[0])]})
            assert (status, body["error"]["code"]) == (503, "unavailable")
        assert (await submit(s, url, docs[:10]))[0]["status"] == "committed"
        # committed, then the response is lost: the retry gets the original receipts
        await post(s, f"{admin}/admin/faults", {"mode": "drop_after_commit", "count": 1})
        with pytest.raises(aiohttp.ClientError):
            await submit(s, url, docs[10:20])
        retry = await submit(s, url, docs[10:20])
        assert [r["status"] for r in retry] == ["duplicate"] * 10
        # half a response, then the cut
        await post(s, f"{admin}/admin/faults", {"mode": "drop_mid_response", "count": 1})
        with pytest.raises((aiohttp.ClientError, ValueError)):
            await submit(s, url, docs[20:30])
        assert {r["status"] for r in await submit(s, url, docs[20:30])} == {"duplicate"}
        # connection refused until cleared
        await post(s, f"{admin}/admin/faults", {"mode": "refuse"})
        with pytest.raises(aiohttp.ClientConnectionError):
            await submit(s, url, docs[30:40])
        async with s.delete(f"{admin}/admin/faults") as resp:
            assert resp.status == 200
        assert {r["status"] for r in await submit(s, url, docs[30:40])} == {"committed"}
        # latency
        await post(s, f"{admin}/admin/faults", {"mode": "latency", "latency_ms": 200, "count": 1})
        await submit(s, url, docs[40:50])
        async with s.get(f"{admin}/admin/faults") as resp:
            view = await resp.json()
        assert view["mode"] == "none" and view["injected"] == 6  # 2 + 1 + 1 + 1 refused + 1
        # one node partitioned: still final; two: stalls; healed: resumes
        assert (await post(s, f"{admin}/admin/partition", {"nodes": ["enterprise3"]}))[1][
            "finalizing"
        ]
        assert {r["status"] for r in await submit(s, url, docs[50:55])} == {"committed"}
        status, view = await post(s, f"{admin}/admin/partition", {"nodes": ["enterprise2"]})
        assert view["finalizing"] is False
        status, body = await post(
            s, f"{url}/v1/documents?wait=0.2", {"documents": [b64(d) for d in docs[55:]]}
        )
        assert {r["status"] for r in body["results"]} == {"pending"}
        await post(s, f"{admin}/admin/heal", {})
        assert {r["status"] for r in await submit(s, url, docs[55:])} <= {"committed", "duplicate"}
        status, body = await post(s, f"{admin}/admin/faults", {"mode": "explode"})
        assert (status, body["error"]["code"]) == (400, "bad_request")
    chain_proc.proc.stop()
    assert committed_counters(chain_proc.data) == list(range(1, 61))


async def test_kill_9_mid_commit_then_restart(tmp_path: Path, device: DeviceSim) -> None:
    data = tmp_path / "ledger"
    proc = ChainProcess(data)
    docs = device.issue(3000)
    try:
        async with aiohttp.ClientSession() as s:
            await register(s, proc.url, device)
            tasks = [
                asyncio.create_task(submit(s, proc.url, docs[i : i + 500]))
                for i in range(0, 3000, 500)
            ]
            await asyncio.sleep(0.15)
            proc.proc.proc.send_signal(signal.SIGKILL)
            proc.proc.proc.wait()
            await asyncio.gather(*tasks, return_exceptions=True)
        proc = ChainProcess(data, proc.port)
        async with aiohttp.ClientSession() as s:
            statuses: dict[str, int] = {}
            for i in range(0, 3000, 500):
                for r in await submit(s, proc.url, docs[i : i + 500]):
                    statuses[r["status"]] = statuses.get(r["status"], 0) + 1
        assert set(statuses) <= {"committed", "duplicate"} and sum(statuses.values()) == 3000
    finally:
        proc.proc.stop()
    assert committed_counters(data) == list(range(1, 3001))
    ok = run_taxctl("hostsim", "chain", "verify", "--data", str(data), timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "3000 documents" in ok.stdout
    db = sqlite3.connect(data / "ledger.sqlite")
    height = db.execute("SELECT height FROM txs WHERE type='document' AND counter=1234").fetchone()[
        0
    ]
    db.execute("UPDATE txs SET body = body || x'00' WHERE counter=1234")
    db.commit()
    db.close()
    bad = run_taxctl("hostsim", "chain", "verify", "--data", str(data), timeout=120)
    assert bad.returncode == 1
    assert f"block {height}:" in bad.stderr
