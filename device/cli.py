"""`taxctl device ...`: run the emulator, or talk to any device on a port.

Exit codes (taxctl_base/exits.py): 0 ok; 1 the device refused (status name and
message on stderr); 2 bad usage or input file; 3 no answer from the device
(before an issuing request a STATUS goes first: if nothing
answers, nothing was sent and the message says what to check; if an issuing
request itself loses its answer, its outcome is unknown: check the counter); 4 the state
directory cannot be used; 6 (`run`) the serial port went away, so that a
supervisor with Restart=on-failure starts the printer again.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from device import serial_flags
from device.protocol.status import DeviceError, Status
from device.protocol.untrusted import shown
from taxctl_base import exits
from taxctl_base.version import add_version

if TYPE_CHECKING:
    from device.limits import Limits

EXIT_REFUSED, EXIT_USAGE, EXIT_LINK, EXIT_STATE = (
    exits.REFUSED,
    exits.USAGE,
    exits.LINK,
    exits.STATE,
)


def to_json(value: Any) -> Any:
    """A response body as JSON: documents and signed objects in base64, keys and hashes in hex."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "document" and isinstance(item, bytes):
                out["cose_sign1"] = base64.b64encode(item).decode()
            elif isinstance(item, bytes) and key in {"public_key", "bureau_key", "last_hash"}:
                out[key] = item.hex()
            else:
                out[key] = to_json(item)
        return out
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


_port_args = serial_flags.port_args


def _request_file_args(p: argparse.ArgumentParser, flag: str, helptext: str) -> None:
    """The request file is an input; `--json` selects output everywhere else, so it stays here
    only as a deprecated spelling of the input flag (cmd_with_json prints a notice)."""
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument(flag, dest="request_file", metavar="FILE", help=helptext)
    group.add_argument(
        "--json", dest="legacy_request_file", metavar="FILE", help=f"deprecated: use {flag}"
    )
    p.set_defaults(request_flag=flag)


STORAGE_LATENCY_MAX_MS = 10_000.0


def _storage_latency(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of milliseconds: {shown(text)}") from None
    if not 0 <= value <= STORAGE_LATENCY_MAX_MS:  # also refuses nan
        raise argparse.ArgumentTypeError(
            f"{shown(text)} is out of range: 0 to {STORAGE_LATENCY_MAX_MS:g} milliseconds"
        )
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    device = subparsers.add_parser("device", help="the tax-control printer emulator and its tools")
    sub = device.add_subparsers(dest="device_command", metavar="COMMAND", required=True)
    _add_run(sub)
    _add_requests(sub)
    _add_documents(sub)
    _add_tools(sub)


def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser("run", help="run the emulated device on a pty or serial port")
    add_version(run)
    run.add_argument("--state", type=Path, required=True, help="device state directory")
    run.add_argument("--port", default="pty", help="'pty' (default), a device path or URL")
    run.add_argument("--link", type=Path, help="with --port pty: symlink to create")
    run.add_argument("--training", action="store_true", help="training mode (first start)")
    run.add_argument("--bureau-key", help="hex public key of the tax bureau to pin (first start)")
    serial_flags.line_args(run)
    run.add_argument("--pace", action="store_true", help="send no faster than --baud on a pty")
    run.add_argument("--offline-seconds", type=int, help="offline time limit")
    run.add_argument("--offline-amount", type=int, help="offline amount limit, fen")
    run.add_argument("--capacity", type=int, help="journal capacity, documents")
    run.add_argument("--tax-rates", help="comma-separated basis points, e.g. 1300,900,600,300,0")
    run.add_argument("--max-in-flight", type=int, default=64)
    run.add_argument(
        "--storage-latency",
        type=_storage_latency,
        default=0.0,
        metavar="MS",
        help="emulation: milliseconds added to every journal commit, as slow fiscal memory"
        " would take (default 0)",
    )
    run.add_argument(
        "--max-clock-step",
        type=int,
        help="seconds SET_TIME may move the clock forward at once (default 86400; recorded)",
    )
    run.set_defaults(func=cmd_run)


def _add_requests(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The commands that send the device one request."""
    for name, helptext in (
        ("info", "identity, keys, registration"),
        ("status", "flags and counters"),
    ):
        p = sub.add_parser(name, help=helptext)
        _port_args(p)
        p.set_defaults(func=cmd_simple, method=name)
    for name, helptext in (
        ("x-report", "sign an X report"),
        ("z-report", "sign a Z report (day close)"),
    ):
        p = sub.add_parser(name, help=helptext)
        _port_args(p)
        p.set_defaults(func=cmd_simple, method=name.replace("-", "_"))

    issue = sub.add_parser("issue", help="issue an invoice from a JSON request file ('-' = stdin)")
    _port_args(issue)
    _request_file_args(issue, "--invoice", "invoice request file, JSON ('-' = stdin)")
    issue.set_defaults(func=cmd_with_json, method="issue")
    credit = sub.add_parser("credit", help="issue a credit note from a JSON request file")
    _port_args(credit)
    _request_file_args(credit, "--credit-note", "credit note request file, JSON ('-' = stdin)")
    credit.set_defaults(func=cmd_with_json, method="credit")


def _add_documents(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Reading one document back: as the device answers it, or as a printed receipt."""
    get = sub.add_parser("get", help="one document, by counter or code and number (reprint)")
    _port_args(get)
    get.add_argument("--counter", type=int)
    get.add_argument("--code")
    get.add_argument("--number")
    get.set_defaults(func=cmd_get)

    receipt = sub.add_parser("receipt", help="print a document's receipt (text, ESC/POS, SVG, PNG)")
    _port_args(receipt)
    receipt.add_argument("--counter", type=int)
    receipt.add_argument("--code")
    receipt.add_argument("--number")
    receipt.add_argument("--format", choices=["text", "escpos", "svg", "png"], default="text")
    receipt.add_argument("--paper", type=int, choices=[58, 80], default=80, help="paper width, mm")
    receipt.add_argument("--out", type=Path, help="file to write (default: standard output)")
    receipt.set_defaults(func=cmd_receipt)


def _add_tools(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The emulator's switches, its clock, and reading its journal offline."""
    control = sub.add_parser("control", help="emulator switches: paper out, cover open")
    _port_args(control)
    control.add_argument("--paper-out", choices=["on", "off"])
    control.add_argument("--cover-open", choices=["on", "off"])
    control.set_defaults(func=cmd_control)

    set_time = sub.add_parser("set-time", help="set the device clock (never backwards)")
    _port_args(set_time)
    set_time.add_argument("time", help="YYYY-MM-DDTHH:MM:SSZ")
    set_time.set_defaults(func=cmd_set_time)

    export = sub.add_parser("export", help="journal as JSON lines, from the state directory")
    export.add_argument("--state", type=Path, required=True)
    export.set_defaults(func=cmd_export)


def _setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _offline_limits(args: argparse.Namespace) -> Limits | None:
    """--offline-seconds / --offline-amount over the defaults; None: neither was given."""
    from device.limits import Limits

    if args.offline_seconds is None and args.offline_amount is None:
        return None
    base = Limits()
    return Limits(
        args.offline_seconds if args.offline_seconds is not None else base.offline_seconds,
        args.offline_amount if args.offline_amount is not None else base.offline_amount,
    )


def cmd_run(args: argparse.Namespace) -> int:
    from device import app
    from device.settings import SettingsError
    from device.signer import KeyFileError
    from device.transport import PortError

    _setup_logging()
    if args.max_clock_step is not None and args.max_clock_step < 1:
        print("taxctl device run: --max-clock-step is at least 1 second", file=sys.stderr)
        return EXIT_USAGE
    limits = _offline_limits(args)
    try:
        rates = frozenset(int(r) for r in args.tax_rates.split(",")) if args.tax_rates else None
        bureau = bytes.fromhex(args.bureau_key) if args.bureau_key else None
    except ValueError as exc:
        print(f"taxctl device run: {exc}", file=sys.stderr)
        return EXIT_USAGE

    async def main() -> int:
        try:
            fw = app.open_device(
                args.state,
                training=True if args.training else None,
                bureau_key=bureau,
                limits=limits,
                capacity=args.capacity,
                tax_rates=rates,
                max_clock_step=args.max_clock_step,
            )
            fw.journal.storage_latency = args.storage_latency / 1000
            port = app.open_port(
                args.port,
                args.link,
                baud=args.baud,
                pace=args.pace,
                parity=args.parity,
                stopbits=args.stopbits,
                rtscts=args.rtscts,
            )
        except (SettingsError, KeyFileError, PortError, ValueError) as exc:
            print(f"taxctl device run: {exc}", file=sys.stderr)
            return EXIT_STATE
        stopped = await app.serve(
            fw,
            port,
            max_in_flight=args.max_in_flight,
            link=args.link if args.port == "pty" else None,
        )
        if not stopped:
            print(f"taxctl device run: the port {args.port} went away", file=sys.stderr)
            return exits.PORT_GONE
        return exits.OK

    return asyncio.run(main())


def _client_call(
    args: argparse.Namespace,
    call: Callable[[Any], Awaitable[dict[str, Any]]],
    *,
    quiet: bool = False,
    issuing: str | None = None,
) -> int:
    """Run one call on a client; `issuing` names what the call signs ("invoice", ...).

    Before an issuing call a STATUS is asked first: if nothing answers, nothing was sent
    that could issue, and the person is told what to check rather than that the outcome
    is unknown."""
    from device.client import DeviceClient, LinkError
    from device.protocol.commands import RESPONSE_TIMEOUT
    from device.transport import PortError

    async def main() -> int:
        try:
            client = await DeviceClient.open(
                args.port,
                baud=args.baud,
                parity=args.parity,
                stopbits=args.stopbits,
                rtscts=args.rtscts,
                response_timeout=args.timeout or RESPONSE_TIMEOUT,
            )
        except PortError as exc:
            print(f"taxctl device: {exc}", file=sys.stderr)
            return EXIT_LINK
        sent = False
        try:
            if issuing is not None:
                await client.status()
            sent = True
            result = await call(client)
        except DeviceError as exc:
            print(f"taxctl device: refused: {exc.text}", file=sys.stderr)
            print(
                json.dumps({"error": exc.status.name, "message": exc.message, "detail": exc.detail})
            )
            return EXIT_REFUSED
        except LinkError as exc:
            print(
                f"taxctl device: {_link_message(exc, issuing if sent else None)}", file=sys.stderr
            )
            return EXIT_LINK
        finally:
            await client.close()
        if not quiet:
            print(json.dumps(to_json(result), ensure_ascii=False, indent=2))
        return 0

    return asyncio.run(main())


def _link_message(exc: Exception, issuing: str | None) -> str:
    """The client's advice to resend with the same request id means nothing to a person at
    a shell (each run picks new ids): say how to find out whether it was issued instead."""
    if issuing is None:
        return str(exc)
    return (
        f"the printer stopped answering ({exc.__class__.__name__}); the {issuing} may have"
        " been signed: check its counter with `taxctl device status` (and `taxctl device get"
        " --counter N`) before sending it again"
    )


def cmd_simple(args: argparse.Namespace) -> int:
    signs = {"x_report": "X report", "z_report": "Z report"}.get(args.method)
    return _client_call(args, lambda c: getattr(c, args.method)(), issuing=signs)


def cmd_with_json(args: argparse.Namespace) -> int:
    name = args.request_file
    if name is None:
        name = args.legacy_request_file
        print(
            f"taxctl device {args.method}: --json FILE is deprecated, use {args.request_flag} FILE",
            file=sys.stderr,
        )
    try:
        text = sys.stdin.read() if name == "-" else Path(name).read_text()
        request = json.loads(text)
    except (OSError, json.JSONDecodeError) as exc:
        print(f"taxctl device {args.method}: cannot read {name}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    signs = "invoice" if args.method == "issue" else "credit note"
    return _client_call(args, lambda c: getattr(c, args.method)(request), issuing=signs)


def cmd_get(args: argparse.Namespace) -> int:
    if args.counter is None and (args.code is None or args.number is None):
        print("taxctl device get: give --counter, or --code and --number", file=sys.stderr)
        return EXIT_USAGE
    return _client_call(
        args, lambda c: c.get_document(counter=args.counter, code=args.code, number=args.number)
    )


def cmd_receipt(args: argparse.Namespace) -> int:
    from device import render
    from device.protocol import qr
    from device.protocol.document import DocumentError, parse_document

    if args.counter is None and (args.code is None or args.number is None):
        print("taxctl device receipt: give --counter, or --code and --number", file=sys.stderr)
        return EXIT_USAGE
    rendered: list[bytes] = []

    async def fetch_and_render(client: Any) -> dict[str, Any]:
        info = await client.info()
        found = await client.get_document(counter=args.counter, code=args.code, number=args.number)
        try:
            document = parse_document(found["document"])
        except DocumentError as exc:
            raise DeviceError(
                Status.INTERNAL_ERROR, f"the device returned a bad document: {exc}"
            ) from None
        if not document.verify(info["public_key"]):
            raise DeviceError(Status.INTERNAL_ERROR, "the document's signature does not verify")
        fmt = args.format
        signed = qr.device_payload(
            found.get("qr"), document.payload, document.hash, info["public_key"]
        )
        if fmt == "text":
            rendered.append(render.text(document.payload, args.paper, signed).encode())
        elif fmt == "escpos":
            rendered.append(render.escpos(document.payload, args.paper, signed))
        elif fmt == "svg":
            rendered.append(render.svg(document.payload, args.paper, signed).encode())
        else:
            rendered.append(render.png(document.payload, args.paper, signed))
        return {"counter": document.counter, "format": fmt, "bytes": len(rendered[0])}

    if args.format in ("png", "escpos") and args.out is None and sys.stdout.isatty():
        print(
            f"taxctl device receipt: --format {args.format} is binary; give --out FILE",
            file=sys.stderr,
        )
        return EXIT_USAGE
    code = _client_call(args, fetch_and_render, quiet=True)
    if code == 0:
        if args.out is not None:
            args.out.write_bytes(rendered[0])
        else:
            sys.stdout.buffer.write(rendered[0])
            sys.stdout.flush()
    return code


def cmd_control(args: argparse.Namespace) -> int:
    def flag(value: str | None) -> bool | None:
        return None if value is None else value == "on"

    return _client_call(
        args, lambda c: c.control(paper_out=flag(args.paper_out), cover_open=flag(args.cover_open))
    )


def cmd_set_time(args: argparse.Namespace) -> int:
    return _client_call(args, lambda c: c.set_time(args.time))


def cmd_export(args: argparse.Namespace) -> int:
    from device.journal import JournalError, export

    try:
        for row in export(args.state):
            line = {
                "counter": row.counter,
                "code": row.code,
                "number": row.number,
                "kind": row.kind,
                "cose_sign1": base64.b64encode(row.doc).decode(),
            }
            sys.stdout.write(json.dumps(line) + "\n")
    except JournalError as exc:
        print(f"taxctl device export: {exc}", file=sys.stderr)
        return EXIT_STATE
    return 0
