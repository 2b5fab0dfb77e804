"""A printer behind a real baud rate: draining a backlog, and sales while it drains.

Per baud rate (9,600 and 115,200 by default), 8N1, paced like a UART in both
directions: the printer sends no faster than the line (`device run --baud N
--pace`) and so does syncd (`--pace`). A chain (training) runs as its own
process, as do the printer and syncd.

Setup (not timed, not over the line): the printer's journal is filled with
the backlog directly, in process, through the real firmware, exactly as
bench/drain.py does; issuing 2,000 documents over a 9,600 baud line would
take half an hour and measure nothing of the drain.

Then, timed, from the first document acknowledged by the printer:
(b) while the drain runs, one sale per second through syncd's POS API
    (issue latency p50/p99); then the sales stop and
(a) the rest of the drain runs alone: documents/s and line utilisation =
    document bytes delivered to the chain / (baud/10 x seconds), next to the
    physical ceiling: the same documents cut into FETCH pages as syncd asks
    for them, as frames on the wire (header, CBOR, escapes, CRC, flags), each
    page followed by one ACK_SYNC answer.
Finally the same sales on the idle line (the backlog drained), and the wire
time of one ISSUE exchange (request + answer frames) at that baud.
Every run checks the chain holds each journal document once, byte for byte.

    python bench/line.py [--baud 9600,115200] [--documents 2000] [--sales 30]
    python bench/line.py --quick        # CI: 120 documents, 115200 only, no timing claims
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.drain import INVOICE, fill_journal
from device.journal import export
from device.pacing import bytes_per_second, wire_seconds
from device.protocol import codec
from device.protocol.commands import Command
from device.protocol.framing import Frame, FrameType, encode_frame
from hostsim.audit import admin_token, chain_documents, compare
from hostsim.pos.mix import MixSettings
from hostsim.pos.till import Tills, TillSettings
from syncd.engine import line_page_bytes
from taxctl_base.processes import Child, all_online, http, wait_status

ISSUE_ANSWER_BYTES = 930  # an ISSUE answer frame for a two-line invoice (document, QR, ...)


def start_shop(root: Path, baud: int, documents: int) -> tuple[list[Child], str, str, str]:
    """A chain, a printer holding `documents` unsynced, syncd: (children, api, chain, id)."""
    device_id = fill_journal(root / "printer", documents)
    logs = root / "logs"
    logs.mkdir()
    children: list[Child] = []
    try:
        return _start(root, baud, children, logs, device_id)
    except BaseException:
        for child in reversed(children):
            child.stop()
        raise


def _start(
    root: Path, baud: int, children: list[Child], logs: Path, device_id: str
) -> tuple[list[Child], str, str, str]:
    chain_args = ["hostsim", "chain", "--data", str(root / "chain"), "--listen", "127.0.0.1:0"]
    chain = Child("chain", [*chain_args, "--training"], logs / "chain.log")
    children.append(chain)
    tty = root / "printer.tty"
    line = ["--baud", str(baud), "--pace"]
    printer = ["device", "run", "--state", str(root / "printer"), "--link", str(tty), *line]
    children.append(Child("printer", printer, logs / "printer.log"))
    syncd = ["syncd", "run", "--state", str(root / "syncd"), "--chain", chain.ready["url"]]
    syncd += ["--device", str(tty), *line, "--api", "127.0.0.1:0", "--log-level", "warning"]
    children.append(Child("syncd", syncd, logs / "syncd.log"))
    api = children[-1].ready["url"]
    wait_status(api, all_online, "printer online", timeout=60)
    return children, api, chain.ready["url"], device_id


def synced_through(api: str) -> int:
    return int(http("GET", f"{api}/v1/status")[1]["devices"][0].get("synced_through") or 0)


def sell(api: str, device_id: str, count: int, rate: float, seed: int) -> dict[str, Any]:
    settings = TillSettings(
        api=api,
        count=count,
        concurrency=1,
        rate=rate,
        seed=seed,
        devices=(device_id,),
        patience=120.0,
        request_timeout=60.0,
        mix=MixSettings(credit_share=0.0, retry_share=0.0),
    )
    report = asyncio.run(Tills(settings).run())
    summary = report.summary()
    return {
        "sales": summary["acknowledged"],
        "refused": summary["refused"],
        "latency_ms": summary["latency_ms"],
    }


def wait_drained(api: str, target: int, timeout: float) -> list[tuple[float, int]]:
    """(perf_counter, synced_through) samples until the printer is synced through `target`."""
    samples: list[tuple[float, int]] = []
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        samples.append((time.perf_counter(), synced_through(api)))
        if samples[-1][1] >= target:
            return samples
        time.sleep(0.05)
    raise TimeoutError(f"synced through {samples[-1][1]} of {target} after {timeout} s")


def ceiling(docs: list[bytes], baud: int) -> dict[str, float]:
    """Document bytes / wire bytes for these documents in the pages syncd asks for."""
    page_bytes = line_page_bytes(baud)
    wire = payload = 0
    start, counter = 0, 1
    ack = {"synced_through": len(docs), "accepted": 1, "last_sync_at": "2026-12-01T00:00:00Z"}
    ack_frame = _frame(Command.ACK_SYNC, {**ack, "time": "2026-12-01T00:00:00Z"})
    pages = 0
    while start < len(docs):
        end, size = start + 1, len(docs[start])
        while end < len(docs) and size + len(docs[end]) <= page_bytes:
            size += len(docs[end])
            end += 1
        body = {
            "documents": docs[start:end],
            "first": counter,
            "last_counter": len(docs),
            "synced_through": counter - 1,
        }
        wire += _frame(Command.FETCH, body)
        payload += size
        counter += end - start
        start, pages = end, pages + 1
    return {
        "page_bytes": page_bytes,
        "pages": pages,
        "fetch_only": round(payload / wire, 3),
        "with_one_ack_per_page": round(payload / (wire + pages * ack_frame), 3),
    }


def _frame(command: Command, body: dict[str, Any]) -> int:
    frame = Frame(FrameType.RESPONSE, 0xA5A5_0000_0000_0001, int(command), 0, codec.encode(body))
    return len(encode_frame(frame))


def issue_wire_seconds(baud: int) -> float:
    request = encode_frame(
        Frame(FrameType.REQUEST, 1 << 63, Command.ISSUE, 0, codec.encode(INVOICE))
    )
    return wire_seconds(len(request) + ISSUE_ANSWER_BYTES, baud)


def run_rate(root: Path, baud: int, documents: int, sales: int) -> dict[str, Any]:
    children, api, chain_url, device_id = start_shop(root, baud, documents)
    try:
        first = wait_drained(api, 1, timeout=600)[-1]
        during = sell(api, device_id, sales, 1.0, seed=1) if sales else None
        sold_at = (time.perf_counter(), synced_through(api))
        samples = wait_drained(api, documents, timeout=24 * 3600)
        drained_at = samples[-1][0]
        idle = sell(api, device_id, sales, 1.0, seed=2) if sales else None
        issued = documents + 2 * sales
        wait_drained(api, issued, timeout=600)
        link_stats = http("GET", f"{api}/v1/status")[1]["devices"][0].get("link_stats")
    finally:
        for child in reversed(children):
            if child.name != "chain":
                child.stop()
    try:
        token = admin_token(root / "chain")
        on_chain = chain_documents(chain_url, device_id, token)
        _, info = http("GET", f"{chain_url}/v1/devices/{device_id}", token=token)
    finally:
        children[0].stop()
    journal = [(row.counter, row.doc) for row in export(root / "printer")]
    audit = compare(device_id, journal, on_chain, bytes.fromhex(info["public_key"]))
    sizes = {counter: len(doc) for counter, doc in journal}
    rate = bytes_per_second(baud)
    alone = drained_at - sold_at[0]
    alone_bytes = sum(sizes[c] for c in range(sold_at[1] + 1, documents + 1))
    whole = drained_at - first[0]
    whole_bytes = sum(sizes[c] for c in range(first[1] + 1, documents + 1))
    return {
        "baud": baud,
        "bytes_per_s": rate,
        "documents": documents,
        "on_chain_once": audit.clean and len(on_chain) == len(journal) == issued,
        "audit": str(audit),
        "drain_alone": {
            "documents": documents - sold_at[1],
            "seconds": round(alone, 2),
            "documents_per_s": round((documents - sold_at[1]) / alone, 2) if alone else None,
            "utilisation": round(alone_bytes / (rate * alone), 3) if alone else None,
        },
        "drain_whole": {
            "documents": documents - first[1],
            "seconds": round(whole, 2),
            "utilisation": round(whole_bytes / (rate * whole), 3) if whole else None,
        },
        "ceiling": ceiling([doc for _, doc in journal[:documents]], baud),
        "sales_during_drain": during,
        "sales_idle_line": idle,
        "issue_exchange_wire_ms": round(issue_wire_seconds(baud) * 1000, 1),
        "syncd_link_stats": link_stats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--baud", default="9600,115200", help="comma-separated rates")
    parser.add_argument("--documents", type=int, default=2000, help="backlog per rate")
    parser.add_argument("--sales", type=int, default=30, help="sales at 1/s, during and idle")
    parser.add_argument("--quick", action="store_true", help="120 documents, 5 sales, 115200")
    args = parser.parse_args()
    if args.quick:
        args.baud, args.documents, args.sales = "115200", 120, 5
    runs = []
    for baud in (int(b) for b in args.baud.split(",")):
        with tempfile.TemporaryDirectory(prefix=f"taxctl-bench-line-{baud}-") as tmp:
            runs.append(run_rate(Path(tmp), baud, args.documents, args.sales))
    print(json.dumps({"benchmark": "line", "framing": "8N1", "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
