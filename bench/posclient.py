"""CPU per sale of the POS client side: `AsyncPosClient` alone, and the tills built on it.

A second process serves the POS API: `printer` is syncd's PosApi over a link to an emulated
printer on a pty (tests/syncd/inprocess.py), `canned` answers every sale with one real
answer recorded from it after `--delay` (the client's CPU is then hardly disturbed by the
server's, and its answers still come one by one as a printer's do). This process sells
`--sales` sales with `--concurrency` in flight and reports its own CPU (process_time) per
sale, after a warm-up. Prints JSON.

    python bench/posclient.py [--server canned|printer] [--sales 2000] [--concurrency 16]
    python bench/posclient.py --profile      # cProfile of the tills run, top functions
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web

from hostsim.pos.mix import MixSettings, SaleMix
from hostsim.pos.till import Tills, TillSettings
from syncd.link import LinkSettings
from syncd.posclient import AsyncPosClient
from tests.syncd.inprocess import pos_till

MIX = MixSettings(credit_share=0.02, retry_share=0.0)  # as bench/e2e.py sells


# --- the server process ----------------------------------------------------------------------


async def _until_stdin_closes() -> None:
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def serve(kind: str, delay: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with pos_till(Path(tmp), LinkSettings(status_interval=60)) as till:
            if kind == "printer":
                print(str(till.http.make_url("")).rstrip("/"), flush=True)
                await _until_stdin_closes()
                return
            resp = await till.http.post("/v1/invoices", json=SaleMix(1, MIX).invoice())
            recorded = await resp.read()

    async def sale(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(delay)  # answers come one by one, as from a printer
        return web.Response(body=recorded, status=201, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/invoices", sale)
    app.router.add_post("/v1/credit-notes", sale)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"http://127.0.0.1:{port}", flush=True)
    await _until_stdin_closes()
    await runner.cleanup()


# --- the client side (this process) ----------------------------------------------------------


async def client_sales(url: str, sales: int, concurrency: int) -> int:
    """`sales` invoices from AsyncPosClient with `concurrency` in flight."""
    mix = SaleMix(7, MIX)
    bodies = [mix.invoice() for _ in range(concurrency)]
    left = sales
    async with AsyncPosClient(url, limit=concurrency) as pos:

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await pos.issue_invoice(bodies[left % concurrency])

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sales


async def till_sales(url: str, sales: int, concurrency: int) -> int:
    settings = TillSettings(api=url, count=sales, concurrency=concurrency, mix=MIX)
    report = await Tills(settings).run()
    assert len(report.acknowledged) == sales, report.summary()
    return sales


Run = Callable[[str, int, int], Coroutine[Any, Any, int]]


def cpu_per_sale(run: Run, url: str, args: argparse.Namespace) -> dict[str, float]:
    """The least CPU per sale of `args.repeat` runs (other processes only ever add to it)."""
    asyncio.run(run(url, max(args.sales // 10, args.concurrency), args.concurrency))  # warm-up
    best = (float("inf"), 0.0)
    for _ in range(args.repeat):
        cpu, wall = time.process_time(), time.perf_counter()
        done = asyncio.run(run(url, args.sales, args.concurrency))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        best = min(best, (cpu / done, done / wall))
    return {"cpu_us_per_sale": round(best[0] * 1e6, 1), "sales_per_s": round(best[1], 1)}


def profile(url: str, sales: int, concurrency: int) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    asyncio.run(till_sales(url, sales, concurrency))
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(30)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=("canned", "printer"), default="canned")
    parser.add_argument("--sales", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--delay", type=float, default=0.03, help="canned: seconds per answer")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the least CPU counts")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--serve", choices=("canned", "printer"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.delay))
        return
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", args.server, "--delay", str(args.delay)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # the printer's shutdown notes
        text=True,
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        if args.profile:
            print(profile(url, args.sales, args.concurrency))
            return
        result: dict[str, Any] = {"server": args.server, "concurrency": args.concurrency}
        if args.server == "canned":
            result["delay_s"] = args.delay
        result["client"] = cpu_per_sale(client_sales, url, args)
        result["tills"] = cpu_per_sale(till_sales, url, args)
        print(json.dumps(result))
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
